"""Numba's disk cache never hands back a kernel compiled against an old helper module."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trajwatch import _kernel_cache

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "trajwatch"


def _kernel_modules() -> dict[str, Path]:
    """Dotted name -> file of every trajwatch module with a disk-cached Numba kernel."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "@njit(" in path.read_text() and "cache=True" in path.read_text():
            dotted = ".".join(path.relative_to(SRC).with_suffix("").parts)
            found[dotted] = path
    return found


def _trajwatch_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("trajwatch"):
            names.add(str(node.module))
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("trajwatch"))
    return names


def test_every_kernel_module_lists_the_kernel_modules_it_compiles_in() -> None:
    kernels = _kernel_modules()
    assert "trajwatch.features._kernels_update" in kernels  # the scan finds them
    for module, path in kernels.items():
        importlib.import_module(module)

        needed, todo = set(), [module]
        while todo:  # the kernel modules it imports, and theirs
            for name in _trajwatch_imports(kernels[todo.pop()]) & kernels.keys() - needed:
                needed.add(name)
                todo.append(name)
        listed = {
            ".".join(("trajwatch", *Path(name).with_suffix("").parts))
            for name in _kernel_cache.REGISTERED.get(module, ())
        }
        assert needed <= listed, f"{path.name}: drop_stale_cache must list {needed - listed}"
        for name in _kernel_cache.REGISTERED.get(module, ()):
            assert (PACKAGE / name).is_file(), f"{module} lists {name}, which does not exist"


HELPER = "from numba import njit\n\n@njit(cache=True)\ndef helper():\n    return {value}\n"
CALLER = """
from numba import njit
from trajwatch._kernel_cache import drop_stale_cache
from stalepkg.helper import helper

@njit(cache=True)
def kernel():
    return helper() * 10
{guard}
"""


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="a JIT cache test")
def test_an_edited_helper_module_reaches_the_guarded_kernel_not_the_plain_one(
    tmp_path: Path,
) -> None:
    pkg = tmp_path / "stalepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    helper = pkg / "helper.py"
    helper.write_text(HELPER.format(value=1))
    guard = f"drop_stale_cache(globals(), ({str(helper)!r},))"
    (pkg / "guarded.py").write_text(CALLER.format(guard=guard))
    (pkg / "plain.py").write_text(CALLER.format(guard=""))
    script = (
        "from stalepkg.guarded import kernel as g\n"
        "from stalepkg.plain import kernel as p\n"
        "print(g(), p(), g.stats.cache_hits[()] if g.stats.cache_hits else 0)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(SRC)])}
    env.pop("NUMBA_DISABLE_JIT", None)
    env.pop("NUMBA_CACHE_DIR", None)

    def run() -> list[int]:
        out = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        assert out.returncode == 0, out.stderr
        return [int(v) for v in out.stdout.split()]

    assert run() == [10, 10, 0]  # compiled, cached
    assert run() == [10, 10, 1]  # both from the cache
    helper.write_text(HELPER.format(value=2))  # the same size: only the timestamp moves
    stat = helper.stat()
    os.utime(helper, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    g, p, hits = run()
    assert p == 10  # Numba's own check misses the edit: the hazard the guard is for
    assert (g, hits) == (20, 0)  # the guarded kernel compiled again, against the new helper
    assert run() == [20, 10, 1]  # and is cached again
