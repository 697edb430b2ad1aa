"""Borrowed arrays: the same memory, shape and strides, with no owner to count."""

from __future__ import annotations

import os

import numpy as np
import pytest
from llvmlite import ir
from numba import njit, types
from numba.core.errors import TypingError
from numba.extending import intrinsic

from trajwatch._borrow import borrow

JIT = os.environ.get("NUMBA_DISABLE_JIT") != "1"


@njit
def _scale_in_place(a, factor):  # type: ignore[no-untyped-def]
    view = borrow(a)
    view *= factor
    return view.shape, view.strides


@pytest.mark.parametrize(
    "a",
    [
        np.arange(5.0),
        np.arange(12, dtype=np.int32).reshape(3, 4),
        np.arange(24.0).reshape(2, 3, 4)[:, ::2, 1:],  # not contiguous
        np.arange(6.0).reshape(2, 3).T,  # Fortran order
        (np.arange(4) + 1j * np.arange(4)).astype(np.complex128),
    ],
    ids=["1d", "int32-2d", "strided-3d", "fortran", "complex"],
)
def test_a_borrowed_array_is_the_same_memory_shape_and_strides(a: np.ndarray) -> None:
    expected = a * 3
    shape, strides = _scale_in_place(a, 3)
    np.testing.assert_array_equal(a, expected)  # written through the view
    assert shape == a.shape and strides == a.strides


@njit
def _views_of_a_borrowed_array(a):  # type: ignore[no-untyped-def]
    b = borrow(a)
    rows = b.reshape((2, 3))
    return rows[1].sum(), b[::2].copy(), np.ascontiguousarray(rows.T)[0, 1]


def test_views_and_copies_of_a_borrowed_array_behave_as_those_of_the_array() -> None:
    a = np.arange(6.0)
    total, evens, corner = _views_of_a_borrowed_array(a)
    assert total == 12.0 and corner == 3.0
    np.testing.assert_array_equal(evens, [0.0, 2.0, 4.0])
    evens[0] = 99.0  # a copy owns its memory: the array is untouched
    assert a[0] == 0.0


@intrinsic
def _owner(typingctx, a):  # type: ignore[no-untyped-def]
    """The address of an array's owner record (Numba's meminfo), 0 for none."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        array = context.make_array(a)(context, builder, value=args[0])
        return builder.ptrtoint(array.meminfo, ir.IntType(64))

    return types.int64(a), codegen


@njit
def _owners(a):  # type: ignore[no-untyped-def]
    b = borrow(a)
    return _owner(a), _owner(b), _owner(b[1:]), _owner(b.reshape((2, 2)))


@pytest.mark.skipif(not JIT, reason="owner records exist in compiled code only")
def test_a_borrowed_array_and_its_views_have_no_owner_to_count() -> None:
    own, borrowed, sliced, reshaped = _owners(np.arange(4.0))
    assert own != 0  # an array from Python has one: every view of it would count it
    assert borrowed == sliced == reshaped == 0


@pytest.mark.skipif(not JIT, reason="a typing error of compiled code")
def test_only_arrays_can_be_borrowed() -> None:
    with pytest.raises(TypingError, match="borrow"):
        njit(lambda x: borrow(x))(1.0)


def test_called_from_python_borrow_returns_its_argument() -> None:
    a = np.arange(3.0)
    assert borrow(a) is a  # what every kernel gets with the JIT off
