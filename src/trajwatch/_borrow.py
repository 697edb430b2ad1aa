"""Borrowed arrays inside compiled kernels: views Numba does not reference-count (private).

Numba counts references to every array it passes around in compiled code: each view,
each helper call and each local copy increments and later decrements the array's
counter with an atomic instruction, through a call into its runtime. A frame of the
feature and detector kernels did ~1,400 of them at 100 atoms, ~15 % of the kernels'
time on this project's machines. :func:`borrow` gives the same array (data, shape,
strides) with no owner record: Numba's runtime skips the count of such an array, and so
of every view taken from it.

A borrowed array is valid while the array it came from is alive. The kernels borrow
their arguments on entry and return numbers, so the caller's references keep the memory
alive for the whole call; a borrowed array must never be returned to Python or kept
beyond the call. With the JIT off, :func:`borrow` returns its argument.

>>> import numpy as np
>>> from numba import njit
>>> @njit
... def total(a):
...     view = borrow(a)
...     return view[1:].sum()
>>> float(total(np.arange(4.0)))
6.0
"""

from __future__ import annotations

from typing import Any, TypeVar

from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

__all__ = ["borrow"]

_A = TypeVar("_A")
_null: Any = cgutils.get_null_value  # (untyped for mypy)


def borrow(a: _A) -> _A:
    """``a`` itself in Python; in compiled code, ``a`` without reference counting."""
    return a


@intrinsic
def _borrowed(typingctx, a):  # type: ignore[no-untyped-def]
    """The array ``a`` with a null owner (meminfo) and no parent object."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        source = context.make_array(a)(context, builder, value=args[0])
        view = context.make_array(a)(context, builder)
        for field in ("nitems", "itemsize", "data", "shape", "strides"):
            setattr(view, field, getattr(source, field))
        view.meminfo = _null(view.meminfo.type)
        view.parent = _null(view.parent.type)
        return view._getvalue()

    return a(a), codegen


@overload(borrow, inline="always")
def _borrow_compiled(a):  # type: ignore[no-untyped-def]
    if isinstance(a, types.Array):
        return lambda a: _borrowed(a)  # type: ignore[call-arg]
    return None
