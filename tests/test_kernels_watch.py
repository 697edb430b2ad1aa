"""The one-call frame kernel against its reference, the feature and detector kernels called
one after the other (also run with NUMBA_DISABLE_JIT=1 by tests/test_nojit.py)."""

from __future__ import annotations

import numpy as np
import pytest
from numba import config

from trajwatch._kernels_watch import WATCH_FRAME, _watch_frame, watch_state
from trajwatch.detectors._kernels import _stack_frame
from trajwatch.features import _kernels_update as fkern
from trajwatch.features._kernels_update import _update
from trajwatch.frame import Frame
from trajwatch.pipeline import Pipeline, PipelineConfig, SourceWatch


def _warmed(frames: list[Frame]) -> SourceWatch:
    """A source's watch after ``frames`` (two-call path), its stack past the warm-up."""
    pipeline = Pipeline(PipelineConfig(warmup_frames=30, min_calibration=5))
    for frame in frames:
        pipeline.process(frame)
    watch = pipeline.sources[frames[0].source]
    assert watch.stack._args is not None  # the fused detector kernel is in use
    return watch


def _arrays(watch: SourceWatch) -> list[np.ndarray]:
    """Every array of the watch's feature and detector state, copied."""
    return [np.array(a, copy=True) for a in (*watch.engine._state, *watch.stack._args)]


@pytest.fixture(scope="module")
def frames(clash_frames: list[Frame]) -> list[Frame]:
    return clash_frames[:200]  # the clash (frame 150) included


def test_one_call_is_the_two_kernels_back_to_back(frames: list[Frame]) -> None:
    """Called as the pipeline calls it (``WATCH_FRAME``: the compiled entry point)."""
    one = _warmed(frames[:60])
    two = _warmed(frames[:60])  # the same state: the pipeline is deterministic
    state = watch_state(one.engine._state, one.scored, one._x, one.stack._args)
    statuses = []
    requests = 0
    for index, frame in enumerate(frames[60:], start=one.stack.frames):
        args = one.engine._kernel_args(frame)
        assert args is not None
        out_one = np.empty(len(one.engine.names))
        got = WATCH_FRAME.entry(args, (out_one, index, state))(*args, out_one, index, state)
        while got < 0:  # a pair list asks for room (its skin widened in the clash)
            one.engine._handle(-got, frame)
            state = watch_state(one.engine._state, one.scored, one._x, one.stack._args)
            got = WATCH_FRAME.entry(args, (out_one, index, state))(*args, out_one, index, state)
            requests += 1
        out_two = np.empty(len(two.engine.names))
        while status := _update(*two.engine._kernel_args(frame), out_two, *two.engine._state):
            two.engine._handle(status, frame)
        x = out_two[two.scored]
        two._x[:] = x
        expected = _stack_frame(two._x, index, *two.stack._args)
        assert got == expected
        np.testing.assert_array_equal(out_one, out_two)  # NaN where NaN, bit for bit
        np.testing.assert_array_equal(one._x, x)
        statuses.append(got)
    for a, b in zip(_arrays(one), _arrays(two), strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(statuses)  # the clash changed the alarm: the status bits were exercised
    assert requests  # and the requests, answered between calls


def test_a_request_of_the_feature_kernel_commits_nothing(frames: list[Frame]) -> None:
    watch = _warmed(frames[:60])
    engine = watch.engine
    engine._cpairs = np.zeros((1, 2), dtype=np.int64)  # no room for the contact list
    engine._cshift = np.zeros((1, 3))
    engine._ibuf[fkern.I_NCONTACT] = -1  # so the next frame rebuilds it
    engine._pack()
    ring = (fkern.I_HEAD, fkern.I_COUNT, fkern.I_PUSHED)
    window = [int(engine._ibuf[i]) for i in ring]
    detectors = [np.array(a, copy=True) for a in watch.stack._args]
    state = watch_state(engine._state, watch.scored, watch._x, watch.stack._args)
    args = engine._kernel_args(frames[60])
    out = np.empty(len(engine.names))
    assert _watch_frame(*args, out, watch.stack.frames, state) == -fkern.GROW_CONTACT
    assert [int(engine._ibuf[i]) for i in ring] == window  # no frame taken
    for a, b in zip(detectors, watch.stack._args, strict=True):
        np.testing.assert_array_equal(a, b)  # the detectors never saw it


@pytest.mark.skipif(config.DISABLE_JIT, reason="the entry point is compiled code")
def test_the_entry_point_is_used_only_for_types_it_was_compiled_for(frames: list[Frame]) -> None:
    """The entry point trusts its arguments' types, so it must get only frames whose
    arrays have the types it was compiled for: a Fortran-ordered or read-only array, or
    an int for a float, gets the dispatcher (which types every argument), never it."""
    watch = _warmed(frames[:60])
    state = watch_state(watch.engine._state, watch.scored, watch._x, watch.stack._args)
    out = np.empty(len(watch.engine.names))
    args = watch.engine._kernel_args(frames[60])
    assert args is not None
    fixed = (out, watch.stack.frames, state)
    _watch_frame(*args, *fixed)  # compiled for these types
    entry = WATCH_FRAME.entry(args, fixed)
    assert entry is not _watch_frame
    assert WATCH_FRAME.entry(args, fixed) is entry
    compiled = len(_watch_frame.overloads)
    fortran = (np.asfortranarray(args[0]), *args[1:])
    read_only = np.array(args[0])
    read_only.setflags(write=False)
    for other in (fortran, (read_only, *args[1:]), (*args[:6], 1, *args[7:])):  # an int energy
        assert WATCH_FRAME.entry(other, fixed) is _watch_frame
    assert len(_watch_frame.overloads) == compiled  # and it compiled nothing
    assert entry(*args, *fixed) >= 0  # it runs the frame
