"""Calling a compiled kernel without Numba's per-call typing of its arguments (private).

Numba's dispatcher works out the type of every argument on every call, ~70 ns each: a
kernel of 17 arguments costs ~2.3 us a call, ~1.2 of it that typing. The compiled entry
point of one of its overloads skips it and only converts the arguments, trusting their
types. :class:`DirectCall` finds that entry point by the Numba fingerprint of the
arguments (dtype, dimensions, layout and writability of each array, the kind of each
scalar: ~15 ns an argument) and keeps it; arguments of types the kernel was not compiled
for get the dispatcher, which compiles as it always does.

>>> import numpy as np
>>> from numba import njit
>>> @njit
... def scaled(x, factor):
...     return factor * x
>>> direct = DirectCall(scaled)
>>> args = (np.arange(3.0),)
>>> direct.entry(args, (2.0,)) is scaled  # not compiled for these types yet
True
>>> direct.entry(args, (2.0,))(*args, 2.0).tolist()
[0.0, 2.0, 4.0]
>>> direct.entry(args, (2.0,)) is not scaled or config.DISABLE_JIT  # the entry point now
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from numba import config
from numba._dispatcher import compute_fingerprint

__all__ = ["DirectCall", "fingerprint"]

#: the Numba fingerprint of a tuple of values (NotImplementedError for a value it cannot
#: describe, such as a structref)
fingerprint: Callable[[tuple[Any, ...]], bytes] = compute_fingerprint


class DirectCall:
    """The fastest callable for a Numba kernel on arguments of given types.

    A caller passes the arguments that vary in type as ``args`` (their fingerprint is the
    key) and those whose type never changes for it as ``fixed``, after them. In a hot
    loop, look the entry up inline and ask :meth:`entry` only on a miss::

        call = direct.entries.get(fingerprint(args)) or direct.entry(args, fixed)
        call(*args, *fixed)

    ``fingerprint`` raises NotImplementedError for a value Numba cannot type. A caller
    whose ``args`` come from outside (the pipeline's, from a frame's attributes) catches
    it and takes :meth:`entry`, whose dispatcher then names the bad argument; one that
    makes its ``args`` itself (the extxyz reader) need not.
    """

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self.entries: dict[bytes, Callable[..., Any]] = {}

    def entry(self, args: tuple[Any, ...], fixed: tuple[Any, ...] = ()) -> Callable[..., Any]:
        """The kernel's compiled entry point for the types of ``args`` then ``fixed`` (kept
        for the next ``args`` of the same types), or the kernel itself: with the JIT off,
        for types it has not compiled, and for values Numba cannot type."""
        kernel = self.kernel
        if config.DISABLE_JIT:  # type: ignore[attr-defined]
            return kernel  # type: ignore[no-any-return]
        try:
            key = fingerprint(args)
            signature = tuple(map(kernel.typeof_pyval, (*args, *fixed)))
        except (NotImplementedError, ValueError):  # the dispatcher will say what is wrong
            return kernel  # type: ignore[no-any-return]
        compiled = kernel.overloads.get(signature)
        if compiled is None:  # not compiled for these types (yet): the dispatcher will
            return kernel  # type: ignore[no-any-return]
        entry: Callable[..., Any] = compiled.entry_point
        self.entries[key] = entry
        return entry
