"""One frame of a source's watch in one compiled call: features, then detectors (private).

:func:`_watch_frame` runs the feature kernel (``features._kernels_update._update``),
gathers the scored features and runs the fused detector kernel
(``detectors._kernels._stack_frame``), so the usual frame crosses from Python into
compiled code once, with no Python between the two. Their ~30 state arrays travel in
one :class:`WatchState` (a Numba structref built when the arrays change), because
Numba's dispatcher spends ~50 ns on each array argument of every call.

The pipeline takes this path when nothing in Python needs the frame between the two
kernels (no LSTM, the stack past its warm-up and fused); every other frame takes the
two calls separately, with the same results.

Numba's on-disk cache notices edits to a kernel's own file only, and this one compiles
the feature and detector kernels into itself: ``drop_stale_cache``
(:mod:`trajwatch._kernel_cache`) throws its cached code away when one of their files has
changed since it was cached (stale code here would read the state with an old layout).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
from numba import config, njit, types
from numba.experimental import structref

from trajwatch._borrow import borrow
from trajwatch._direct_call import DirectCall
from trajwatch._kernel_cache import drop_stale_cache
from trajwatch.detectors._kernels import _stack_frame
from trajwatch.features._kernels_update import _update

#: the fields of a WatchState: the feature engine's state (``FeatureEngine._state``),
#: the scored features' indices and vector, then the fused detector kernel's arguments
#: after the frame index (``DetectorStack._args``)
_FIELDS = (
    ("fstate", types.float64[::1]),
    ("istate", types.int64[::1]),
    ("i32state", types.int32[::1]),
    ("dft", types.complex128[:, ::1]),
    ("cpairs", types.int64[:, ::1]),
    ("cshift", types.float64[:, ::1]),
    ("rpairs", types.int64[:, ::1]),
    ("rshift", types.float64[:, ::1]),
    ("scored", types.int64[::1]),
    ("x", types.float64[::1]),
    ("alarm", types.float64[::1]),
    ("cusum", types.float64[::1]),
    ("drift_sum", types.float64[::1]),
    ("drift_n", types.float64[::1]),
    ("drift_clip", types.float64),
    ("p", types.float64[::1]),
    ("rt", types.float64[::1]),
    ("z_stats", types.float64[:, ::1]),
    ("z_quantum", types.float64[:, ::1]),
    ("z_z", types.float64[::1]),
    ("zt_ring", types.float64[:, ::1]),
    ("zt_top", types.float64[:, ::1]),
    ("zt_meta", types.float64[:, ::1]),
    ("r_ring", types.float64[:, ::1]),
    ("r_srt", types.float64[:, ::1]),
    ("r_meta", types.float64[:, ::1]),
    ("r_center", types.float64[::1]),
    ("r_spread", types.float64[::1]),
    ("r_quantum", types.float64[:, ::1]),
    ("r_z", types.float64[::1]),
    ("cal_rings", types.float64[:, :, ::1]),
    ("cal_states", types.int64[:, ::1]),
    ("cal_tails", types.float64[:, ::1]),
)


@structref.register
class _WatchStateType(types.StructRef):
    pass


class WatchState(structref.StructRefProxy):
    """The arrays :func:`_watch_frame` works on, as one argument (views, not copies)."""


structref.define_boxing(_WatchStateType, WatchState)  # type: ignore[no-untyped-call]
_STATE = _WatchStateType(list(_FIELDS))  # type: ignore[no-untyped-call]
# Every WatchState has this one type (``_new_state``'s signature says so): a class
# attribute spares Numba's dispatcher the property call on each frame (~85 ns of ~0.5 us).
WatchState._numba_type_ = _STATE  # type: ignore[assignment]
_new_struct: Any = structref.new  # (typed for mypy as never returning)


@njit(_STATE(*(t for _, t in _FIELDS)), cache=True)
def _new_state(  # type: ignore[no-untyped-def]
    fstate, istate, i32state, dft, cpairs, cshift, rpairs, rshift, scored, x, alarm, cusum,
    drift_sum, drift_n, drift_clip, p, rt, z_stats, z_quantum, z_z, zt_ring, zt_top, zt_meta,
    r_ring, r_srt, r_meta, r_center, r_spread, r_quantum, r_z, cal_rings, cal_states, cal_tails,
):  # fmt: skip
    s = _new_struct(_STATE)
    s.fstate = fstate
    s.istate = istate
    s.i32state = i32state
    s.dft = dft
    s.cpairs = cpairs
    s.cshift = cshift
    s.rpairs = rpairs
    s.rshift = rshift
    s.scored = scored
    s.x = x
    s.alarm = alarm
    s.cusum = cusum
    s.drift_sum = drift_sum
    s.drift_n = drift_n
    s.drift_clip = drift_clip
    s.p = p
    s.rt = rt
    s.z_stats = z_stats
    s.z_quantum = z_quantum
    s.z_z = z_z
    s.zt_ring = zt_ring
    s.zt_top = zt_top
    s.zt_meta = zt_meta
    s.r_ring = r_ring
    s.r_srt = r_srt
    s.r_meta = r_meta
    s.r_center = r_center
    s.r_spread = r_spread
    s.r_quantum = r_quantum
    s.r_z = r_z
    s.cal_rings = cal_rings
    s.cal_states = cal_states
    s.cal_tails = cal_tails
    return s


def watch_state(
    engine_state: tuple[Any, ...], scored: np.ndarray, x: np.ndarray, stack_args: tuple[Any, ...]
) -> Any:
    """The :class:`WatchState` of these arrays (a plain namespace with the JIT off), or
    None if one is not of the type the kernel was compiled for (that watch then takes
    the two-call path)."""
    values = (*engine_state, scored, x, *stack_args)
    if config.DISABLE_JIT:  # type: ignore[attr-defined]
        return SimpleNamespace(**dict(zip((name for name, _ in _FIELDS), values, strict=True)))
    try:
        return _new_state(*values)
    except TypeError:  # no matching definition: a type this kernel does not cover
        return None


@njit(cache=True, nogil=True)
def _watch_frame(
    positions: np.ndarray,
    numbers: np.ndarray,
    velocities: np.ndarray,
    forces: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    energy: float,
    time: float,
    step: float,
    has_velocities: bool,
    has_forces: bool,
    has_cell: bool,
    has_energy: bool,
    has_time: bool,
    out: np.ndarray,
    index: int,
    s: Any,
) -> int:
    """Features of the frame into ``out``, the scored ones into ``s.x``, then the detector
    stack's frame ``index``; returns the stack's status bits (>= 0), or minus the feature
    kernel's request (nothing committed: answer it the usual way)."""
    # borrowed (trajwatch._borrow) here as well as inside the two kernels: their
    # arguments' counts on entry cost ~1 us a frame at 100 atoms
    b = borrow
    status = _update(b(positions), b(numbers), b(velocities), b(forces), b(cell), b(pbc),
                     energy, time, step, has_velocities, has_forces, has_cell, has_energy,
                     has_time, b(out), b(s.fstate), b(s.istate), b(s.i32state), b(s.dft),
                     b(s.cpairs), b(s.cshift), b(s.rpairs), b(s.rshift))  # fmt: skip
    if status != 0:
        return -status
    x = s.x
    scored = s.scored
    for k in range(scored.shape[0]):
        x[k] = out[scored[k]]
    return _stack_frame(x, index, b(s.alarm), b(s.cusum), b(s.drift_sum), b(s.drift_n),
                        s.drift_clip, b(s.p), b(s.rt), b(s.z_stats), b(s.z_quantum), b(s.z_z),
                        b(s.zt_ring), b(s.zt_top), b(s.zt_meta), b(s.r_ring), b(s.r_srt),
                        b(s.r_meta), b(s.r_center), b(s.r_spread), b(s.r_quantum), b(s.r_z),
                        b(s.cal_rings), b(s.cal_states), b(s.cal_tails))  # fmt: skip


drop_stale_cache(
    globals(),
    (
        "_borrow.py",
        "features/_kernels_update.py",
        "features/_kernels.py",
        "features/_kernels_neighbors.py",
        "detectors/_kernels.py",
    ),
)

#: how the pipeline calls :func:`_watch_frame`: its compiled entry point for the types of
#: the frame's arguments (:mod:`trajwatch._direct_call`); ``out``, the index and the
#: WatchState have one type each, so they are the fixed arguments
WATCH_FRAME = DirectCall(_watch_frame)
