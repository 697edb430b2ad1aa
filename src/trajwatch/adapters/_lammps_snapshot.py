"""LAMMPS's ``fix external`` callback compiled to machine code: the step's arrays into a ring.

:func:`snapshot_callback` is a C function pointer for ``lammps_set_fix_external_callback``.
LAMMPS calls it on its own thread, inside ``run``; it copies the step's positions,
forces, velocities, atom IDs, box and time into the next free slot of a ring of
preallocated arrays and returns. It never touches a Python object, so it does not take
the GIL: a Python thread (``LammpsWatcher(background=True)``) builds and sends the
frames on another core while LAMMPS steps on.

Everything the callback needs arrives through its ``caller`` pointer: the address of a
``CONTROL_SIZE`` int64 array (:func:`control_block`) holding the ring's addresses and
LAMMPS's function and variable addresses, all looked up once in Python. Slot ``s`` of
the ring is ``data[s]`` (x, f, v: ``(3, n_atoms, 3)`` float64 in LAMMPS units and order),
``tags[s]`` (atom IDs, int64), ``meta[s]`` (:data:`META_FIELDS`, float64).

The writer (LAMMPS's thread) advances ``HEAD`` with a release store after the slot is
written; the reader (Python) advances ``TAIL`` after it has used the slot, and the
writer reads it with acquire loads. When the ring is full the callback drops the step
(counted in ``DROPPED``) or, with ``WAIT_WHEN_FULL``, spins until the sender frees a
slot (or the sender has stopped: ``SENDER_ALIVE`` 0).
"""

from __future__ import annotations

import ctypes
from typing import Any, no_type_check

import numba
import numpy as np
from llvmlite import ir
from numba import carray, cfunc, types  # type: ignore[attr-defined]
from numba.extending import intrinsic
from numpy.typing import NDArray

__all__ = ["CONTROL_SIZE", "META_FIELDS", "control_block", "set_callback", "snapshot_callback"]

# the control block: int64 slots, written once by Python unless marked
HEAD, TAIL, DROPPED, STOP, LAST_STEP = 0, 1, 2, 3, 4  # shared counters and flags
N_SLOTS, N_ATOMS, TAG64, WANT_E = 5, 6, 7, 8
HANDLE, EXTRACT_ATOM, EXTRACT_COMPUTE, FORCE_TIMEOUT = 9, 10, 11, 12
NAME_V, NAME_F, NAME_PE = 13, 14, 15
DATA, TAGS, META = 16, 17, 18
BOXLO, BOXHI, XY, XZ, YZ, DT, ATIME, ATIMESTEP = 19, 20, 21, 22, 23, 24, 25, 26
WAIT_WHEN_FULL, SENDER_ALIVE, SCHED_YIELD = 27, 28, 29  # a full ring: wait, not drop
CONTROL_SIZE = 30
#: STOP: 0 run on, 1 asked (by Python), 2 passed on to LAMMPS
STOP_ASKED, STOP_SENT = 1, 2

#: a slot's scalars, in order (float64)
META_FIELDS = (
    "step", "nlocal", "lo_x", "lo_y", "lo_z", "hi_x", "hi_y", "hi_z",
    "xy", "xz", "yz", "dt", "atime", "atimestep", "energy",
)  # fmt: skip
META_SIZE = len(META_FIELDS)


def _pointer_at(kind: Any, c_name: str) -> Any:
    """An intrinsic: an int64 address as a ``kind *`` (``c_name`` for its docstring)."""

    def pointer_at(typingctx: Any, address: Any) -> Any:
        signature = types.CPointer(kind)(types.int64)

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            return builder.inttoptr(args[0], context.get_value_type(sig.return_type))

        return signature, codegen

    pointer_at.__doc__ = f"``({c_name} *) address``."
    return intrinsic(pointer_at)


_f64_at = _pointer_at(types.float64, "double")
_i64_at = _pointer_at(types.int64, "int64_t")
_i32_at = _pointer_at(types.int32, "int32_t")


@intrinsic
def _load_acquire(typingctx: Any, address: Any) -> Any:
    """The int64 at ``address``, read as an atomic acquire load (re-read on every call)."""
    signature = types.int64(types.int64)

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        pointer = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        return builder.load_atomic(pointer, "acquire", 8)

    return signature, codegen


@intrinsic
def _store_release(typingctx: Any, address: Any, value: Any) -> Any:
    """Store the int64 ``value`` at ``address`` as an atomic release store."""
    signature = types.void(types.int64, types.int64)

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        pointer = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        builder.store_atomic(args[1], pointer, "release", 8)
        return context.get_dummy_value()

    return signature, codegen


@intrinsic
def _address(typingctx: Any, pointer: Any) -> Any:
    """A pointer's address as an int64."""
    signature = types.int64(pointer)

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return builder.ptrtoint(args[0], ir.IntType(64))

    return signature, codegen


def _caller(pointers: int, ints: int) -> Any:
    """An intrinsic calling ``void *f(void *, ..., int, ...)`` at an address.

    Its arguments are the function's address, then ``pointers`` addresses and ``ints``
    C ints, all given as int64; it returns the result's address.
    """
    kinds = [ir.IntType(8).as_pointer()] * pointers + [ir.IntType(32)] * ints

    def call(typingctx: Any, function: Any, *args: Any) -> Any:
        signature = types.int64(*([types.int64] * (1 + len(kinds))))

        def codegen(context: Any, builder: Any, sig: Any, values: Any) -> Any:
            function_type = ir.FunctionType(ir.IntType(8).as_pointer(), kinds)
            target = builder.inttoptr(values[0], function_type.as_pointer())
            arguments = [
                builder.inttoptr(v, k) if isinstance(k, ir.PointerType) else builder.trunc(v, k)
                for v, k in zip(values[1:], kinds, strict=True)
            ]
            return builder.ptrtoint(builder.call(target, arguments), ir.IntType(64))

        return signature, codegen

    if pointers == 0 and ints == 0:

        def none(typingctx: Any, function: Any) -> Any:
            return call(typingctx, function)

        return intrinsic(none)
    if pointers == 1 and ints == 0:

        def one(typingctx: Any, function: Any, a: Any) -> Any:
            return call(typingctx, function, a)

        return intrinsic(one)
    if pointers == 2 and ints == 0:

        def two(typingctx: Any, function: Any, a: Any, b: Any) -> Any:
            return call(typingctx, function, a, b)

        return intrinsic(two)

    def four(typingctx: Any, function: Any, a: Any, b: Any, c: Any, d: Any) -> Any:
        return call(typingctx, function, a, b, c, d)

    return intrinsic(four)


_sched_yield = _caller(0, 0)  # int sched_yield(void): the result is not used
_force_timeout = _caller(1, 0)  # void lammps_force_timeout(void *handle)
_extract_atom = _caller(2, 0)  # void *lammps_extract_atom(void *handle, const char *name)
_extract_compute = _caller(2, 2)  # void *lammps_extract_compute(handle, id, style, type)

_SIGNATURE = types.void(
    types.voidptr, types.int64, types.int32, types.voidptr, types.voidptr, types.voidptr
)


@no_type_check  # numba types it
def _snapshot(caller, step, nlocal, ids, x, fexternal):  # pragma: no cover - machine code
    control = carray(caller, (CONTROL_SIZE,), np.int64)
    if control[STOP] == STOP_ASKED:
        _force_timeout(control[FORCE_TIMEOUT], control[HANDLE])
        control[STOP] = STOP_SENT
    if step == control[LAST_STEP]:
        return  # a run's set-up calls back again for the step already taken
    control[LAST_STEP] = step
    head = control[HEAD]
    base = _address(caller)
    while head - _load_acquire(base + TAIL * 8) >= control[N_SLOTS]:  # the ring is full
        if not control[WAIT_WHEN_FULL] or not _load_acquire(base + SENDER_ALIVE * 8):
            control[DROPPED] += 1
            return
        # wait for the sender to free a slot, giving the core away while waiting
        _sched_yield(control[SCHED_YIELD])
    n = control[N_ATOMS]
    m = min(np.int64(nlocal), n)
    slot = head % control[N_SLOTS]
    tags = carray(_i64_at(control[TAGS] + slot * n * 8), (n,))
    if control[TAG64]:
        source64 = carray(_i64_at(_address(ids)), (m,))
        for i in range(m):
            tags[i] = source64[i]
    else:
        source32 = carray(_i32_at(_address(ids)), (m,))
        for i in range(m):
            tags[i] = source32[i]
    data = carray(_f64_at(control[DATA] + slot * 9 * n * 8), (3, n * 3))
    rows = (
        _i64_at(_address(x))[0],
        _i64_at(_extract_atom(control[EXTRACT_ATOM], control[HANDLE], control[NAME_F]))[0],
        _i64_at(_extract_atom(control[EXTRACT_ATOM], control[HANDLE], control[NAME_V]))[0],
    )
    for k in range(3):
        source = carray(_f64_at(rows[k]), (m * 3,))
        target = data[k]
        for i in range(m * 3):
            target[i] = source[i]
    meta = carray(_f64_at(control[META] + slot * META_SIZE * 8), (META_SIZE,))
    meta[0] = step
    meta[1] = nlocal
    lo = carray(_f64_at(control[BOXLO]), (3,))
    hi = carray(_f64_at(control[BOXHI]), (3,))
    for k in range(3):
        meta[2 + k] = lo[k]
        meta[5 + k] = hi[k]
    meta[8] = _f64_at(control[XY])[0]
    meta[9] = _f64_at(control[XZ])[0]
    meta[10] = _f64_at(control[YZ])[0]
    meta[11] = _f64_at(control[DT])[0]
    meta[12] = _f64_at(control[ATIME])[0]
    meta[13] = _i64_at(control[ATIMESTEP])[0]
    meta[14] = np.nan
    if control[WANT_E]:
        pe = _extract_compute(control[EXTRACT_COMPUTE], control[HANDLE], control[NAME_PE], 0, 0)
        if pe != 0:
            meta[14] = _f64_at(pe)[0]
    _store_release(base + HEAD * 8, head + 1)  # after every store into the slot


_compiled: list[Any] = []


def snapshot_callback() -> Any:
    """The compiled callback (a ``numba.cfunc``; its ``address`` goes to LAMMPS).

    Compiled on first use, with the JIT on even under ``NUMBA_DISABLE_JIT=1``: LAMMPS
    calls it without the GIL, so it cannot fall back to Python.
    """
    if not _compiled:
        config: Any = numba.config
        disabled = config.DISABLE_JIT
        config.DISABLE_JIT = False
        try:
            _compiled.append(cfunc(_SIGNATURE, cache=True)(_snapshot))
        finally:
            config.DISABLE_JIT = disabled
    return _compiled[0]


def control_block(
    lmp: Any, n_atoms: int, n_slots: int, energy: bool, wait_when_full: bool
) -> tuple[NDArray[np.int64], dict[str, Any]]:
    """The control block for ``lmp`` and the ring it points to (keep both alive)."""
    extract = lmp.lib.lammps_extract_global
    extract.restype = ctypes.c_void_p  # the lammps module sets it before each of its calls

    def global_address(name: str) -> int:
        address = extract(lmp.lmp, name.encode())
        if not address:
            raise RuntimeError(f"LAMMPS has no global {name!r}")
        return int(address)

    if lmp.extract_setting("bigint") != 8:
        raise NotImplementedError("the compiled LAMMPS callback needs a 64-bit bigint build")
    ring: dict[str, Any] = {  # np.full writes every page now, not in LAMMPS's first steps
        "data": np.full((n_slots, 3, n_atoms, 3), np.nan),
        "tags": np.full((n_slots, n_atoms), 0, dtype=np.int64),
        "meta": np.full((n_slots, META_SIZE), np.nan),
        # C strings the callback passes to LAMMPS
        "names": [ctypes.create_string_buffer(s) for s in (b"v", b"f", b"thermo_pe")],
    }

    def function(name: str) -> int:
        return int(ctypes.cast(getattr(lmp.lib, name), ctypes.c_void_p).value or 0)

    control = np.zeros(CONTROL_SIZE, dtype=np.int64)
    control[LAST_STEP] = -1
    control[N_SLOTS], control[N_ATOMS] = n_slots, n_atoms
    control[TAG64] = lmp.extract_setting("tagint") == 8
    control[WANT_E] = energy
    control[WAIT_WHEN_FULL] = wait_when_full
    control[SENDER_ALIVE] = 1
    control[HANDLE] = int(lmp.lmp.value)
    control[EXTRACT_ATOM] = function("lammps_extract_atom")
    control[EXTRACT_COMPUTE] = function("lammps_extract_compute")
    control[FORCE_TIMEOUT] = function("lammps_force_timeout")
    control[SCHED_YIELD] = int(
        ctypes.cast(ctypes.CDLL(None).sched_yield, ctypes.c_void_p).value or 0
    )
    for index, buffer in zip((NAME_V, NAME_F, NAME_PE), ring["names"], strict=True):
        control[index] = ctypes.addressof(buffer)
    control[DATA] = ring["data"].ctypes.data
    control[TAGS] = ring["tags"].ctypes.data
    control[META] = ring["meta"].ctypes.data
    for index, name in (
        (BOXLO, "boxlo"), (BOXHI, "boxhi"), (XY, "xy"), (XZ, "xz"), (YZ, "yz"),
        (DT, "dt"), (ATIME, "atime"), (ATIMESTEP, "atimestep"),
    ):  # fmt: skip
        control[index] = global_address(name)
    return control, ring


def set_callback(lmp: Any, fix_id: bytes, control: NDArray[np.int64]) -> None:
    """Make :func:`snapshot_callback` the callback of ``fix <fix_id> ... external``.

    Called through our own prototype: the lammps module declares the caller argument a
    ``py_object``, and here it is the control block's address.
    """
    address = ctypes.cast(lmp.lib.lammps_set_fix_external_callback, ctypes.c_void_p).value or 0
    setter = ctypes.CFUNCTYPE(
        None, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p
    )(address)
    setter(lmp.lmp, fix_id, snapshot_callback().address, control.ctypes.data)
