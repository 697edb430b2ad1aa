"""Numba's on-disk cache, thrown away when a file a kernel compiles in has changed (private).

Numba checks a cached kernel against its own file only. A kernel that calls kernels of
another module (or reads its constants) compiles them into itself, so after an edit of
that module (a ``git pull`` in an editable install) the cache would hand back machine
code built from the old helper: wrong numbers, or a crash on a changed state layout. A
module whose kernels call into other modules ends with::

    drop_stale_cache(globals(), ("features/_kernels.py", ...))

which flushes the disk cache of that module's kernels when a listed file's timestamp or
size differs from what it recorded last time (``<cache dir>/<module>.dependencies``).
The kernels then compile afresh, once. tests/test_kernel_cache.py checks that every
such module lists every kernel module it imports, and theirs.

>>> drop_stale_cache({"__name__": "nothing.here"}, ())  # no kernels: nothing to do
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from numba import config

#: the package folder the dependencies are named from
PACKAGE = Path(__file__).resolve().parent

#: module name -> the files it depends on, as given (for the tests)
REGISTERED: dict[str, tuple[str, ...]] = {}


def drop_stale_cache(namespace: Mapping[str, Any], dependencies: Sequence[str]) -> None:
    """Flush the on-disk cache of the kernels defined in ``namespace`` (a module's
    ``globals()``) if one of ``dependencies`` (paths from the package folder) changed
    since the last check; a no-op without the JIT or where the cache cannot be written."""
    module = namespace["__name__"]
    REGISTERED[module] = tuple(dependencies)
    caches = [
        value._cache
        for value in namespace.values()
        if getattr(value, "py_func", None) is not None
        and value.py_func.__module__ == module
        and hasattr(value._cache, "_cache_path")  # cache=True (not Numba's NullCache)
    ]
    if not caches or config.DISABLE_JIT:  # type: ignore[attr-defined]
        return
    stats = [(PACKAGE / name).stat() for name in dependencies]
    stamp = " ".join(f"{st.st_mtime_ns}:{st.st_size}" for st in stats)
    record = Path(caches[0]._cache_path) / f"{module.rpartition('.')[2]}.dependencies"
    try:
        if record.exists() and record.read_text() == stamp:
            return
        for cache in caches:
            cache.flush()
        tmp = record.with_suffix(f".{os.getpid()}")
        tmp.write_text(stamp)
        tmp.replace(record)
    except OSError:  # a cache directory we cannot write: Numba then does not cache either
        pass
