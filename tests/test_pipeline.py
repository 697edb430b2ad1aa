"""The default pipeline on real EMT MD: the clash is caught at once, the clean run is quiet."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from trajwatch.detectors.stack import DetectorStack
from trajwatch.frame import Frame
from trajwatch.pipeline import Pipeline, PipelineConfig, SourceWatch, run


def test_clean_run_raises_nothing(clean_frames: list[Frame]) -> None:
    summary = run(clean_frames, Pipeline())
    assert summary.frames == len(clean_frames)
    assert summary.events == []


def test_clash_is_caught_within_a_few_frames_and_not_before(
    clash_frames: list[Frame], clash_at: int
) -> None:
    events = run(clash_frames, Pipeline()).events
    anomalies = [e for e in events if e.event == "anomaly"]
    assert len(anomalies) == 1, events
    alarm = anomalies[0]
    assert clash_at <= alarm.frame <= clash_at + 3
    assert alarm.onset_frame is not None and alarm.onset_frame <= alarm.frame
    assert alarm.severity == "critical"
    assert alarm.source == "clash"
    assert alarm.step == clash_frames[alarm.frame].step
    # The evidence names the pushed atom: it is among the atoms reported.
    names = [f.name for f in alarm.features]
    assert "step_disp_max" in names or "step_min_dist" in names
    pushed = _pushed_atom(clash_frames, clash_at)
    assert pushed in alarm.atoms


def test_alarm_recovers_once_the_system_relaxes(clash_frames: list[Frame]) -> None:
    events = run(clash_frames, Pipeline()).events
    kinds = [e.event for e in events]
    assert kinds in (["anomaly"], ["anomaly", "recovered"])
    if "recovered" in kinds:
        assert events[1].frame > events[0].frame


def test_sources_are_watched_separately(
    clean_frames: list[Frame], clash_frames: list[Frame]
) -> None:
    pipeline = Pipeline()
    events = []
    for a, b in zip(clean_frames, clash_frames, strict=True):  # interleaved, as from a proxy
        events += pipeline.process(a) + pipeline.process(b)
    assert {e.source for e in events} == {"clash"}
    assert set(pipeline.sources) == {"clean", "clash"}
    assert pipeline.sources["clean"].frames == len(clean_frames)


def test_no_alarm_during_warm_up(clash_frames: list[Frame]) -> None:
    config = PipelineConfig(warmup_frames=len(clash_frames))
    assert run(clash_frames, Pipeline(config)).events == []


@pytest.mark.parametrize(
    ("fusion", "lstm"), [("cauchy", False), ("vote", False), ("cauchy", True)]
)
def test_optimised_path_gives_the_events_and_scores_of_the_plain_one(
    clean_frames: list[Frame],
    clash_frames: list[Frame],
    fusion: str,
    lstm: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Real EMT MD, two sources interleaved: the fused detector kernel against the
    stack's plain path (one kernel per detector and step), bit for bit; also with the
    shipped LSTM in the fusion."""

    def watch(fused: bool) -> tuple[list[str], list[tuple[str, float]]]:
        monkeypatch.setattr(DetectorStack, "fused", fused)
        pipeline = Pipeline(PipelineConfig(fusion=fusion, lstm=lstm))
        events, scores = [], []
        for a, b in zip(clean_frames, clash_frames, strict=True):
            for frame in (a, b):
                events += [e.to_json() for e in pipeline.process(frame)]
                scores.append((frame.source, pipeline.sources[frame.source].last_score))
        assert all((w.stack._fused is not None) == fused for w in pipeline.sources.values())
        return events, scores

    plain = watch(False)
    assert watch(True) == plain
    assert any('"anomaly"' in e for e in plain[0])


def test_one_call_path_gives_the_events_scores_and_features_of_two_calls(
    clean_frames: list[Frame], clash_frames: list[Frame], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real EMT MD, two sources interleaved, one of them losing an atom midway (a new
    segment, and a new stack): features and detectors in one compiled call per frame
    against the two calls, bit for bit."""
    shrunk = [_without_last_atom(f) if i >= 220 else f for i, f in enumerate(clean_frames)]

    def watch(one_call: bool) -> tuple[list[str], list[Any]]:
        monkeypatch.setattr(SourceWatch, "one_call", one_call)
        pipeline = Pipeline()
        events, seen = [], []
        for a, b in zip(shrunk, clash_frames, strict=True):
            for frame in (a, b):
                events += [e.to_json() for e in pipeline.process(frame)]
                w = pipeline.sources[frame.source]
                seen.append((w.last_score, w.last_features.tobytes(), w.stack.frames))
        assert all((w._one_call is not None) == one_call for w in pipeline.sources.values())
        return events, seen

    two = watch(False)
    assert watch(True) == two
    kinds = [json.loads(e)["event"] for e in two[0]]
    assert "anomaly" in kinds and kinds.count("anomaly") >= 2  # the clash, the lost atom


@pytest.mark.parametrize("one_call", [True, False])
def test_a_value_numba_cannot_type_gets_the_dispatchers_error(
    clean_frames: list[Frame], monkeypatch: pytest.MonkeyPatch, one_call: bool
) -> None:
    """A frame attribute replaced after construction by something the kernels cannot take
    (a Decimal energy) is refused with Numba's own message naming the type, on the
    one-call path as on the plain one (with the JIT off, Python's TypeError does)."""
    from decimal import Decimal

    from numba.core.errors import TypingError

    monkeypatch.setattr(SourceWatch, "one_call", one_call)
    pipeline = Pipeline()
    for frame in clean_frames[:120]:
        pipeline.process(frame)
    watch = next(iter(pipeline.sources.values()))
    assert (watch._one_call is not None) == one_call  # the path under test is warm
    bad = copy.copy(clean_frames[120])  # (the fixture's frames are shared)
    bad.energy = Decimal("1.5")  # type: ignore[assignment]
    with pytest.raises((TypingError, TypeError), match="Decimal"):
        pipeline.process(bad)


def test_read_only_inputs_compile_nothing_in_the_hot_path(clash_frames: list[Frame]) -> None:
    """Adapters share one read-only numbers array among their frames, and a producer may
    hand Frame read-only arrays: after warm-up, no frame may compile a kernel again (a
    read-only array is another type to Numba: ~9 s on the engine's thread), and the
    events are those of writable inputs."""
    from trajwatch._kernels_watch import _watch_frame
    from trajwatch.features._kernels_update import _update
    from trajwatch.pipeline import warmup

    warmup()
    shared = clash_frames[0].numbers.copy()
    shared.setflags(write=False)

    def read_only(f: Frame) -> Frame:
        arrays = [None if a is None else a.copy() for a in (f.positions, f.velocities, f.forces)]
        for a in arrays:
            if a is not None:
                a.setflags(write=False)
        positions, velocities, forces = arrays
        assert positions is not None
        taken = Frame(positions, shared, velocities=velocities, forces=forces, energy=f.energy,
                      cell=f.cell, pbc=f.pbc, step=f.step, time=f.time, source=f.source,
                      copy=False)  # fmt: skip
        assert taken.positions.flags.writeable  # Frame copied what it could not own
        # what an adapter's trusted constructor hands over: the shared read-only numbers
        return Frame._from_owned(
            taken.positions, shared, taken.velocities, taken.forces, f.energy, f.cell, f.pbc,
            f.step, f.time, f.seq, f.source,
        )  # fmt: skip

    compiled = [len(getattr(k, "signatures", ())) for k in (_update, _watch_frame)]
    pipeline, plain = Pipeline(), Pipeline()
    got = [e.to_json() for f in clash_frames for e in pipeline.process(read_only(f))]
    want = [e.to_json() for f in clash_frames for e in plain.process(f)]
    assert got == want and any('"anomaly"' in e for e in got)
    assert [len(getattr(k, "signatures", ())) for k in (_update, _watch_frame)] == compiled


def _without_last_atom(f: Frame) -> Frame:
    cut = slice(None, -1)
    v = None if f.velocities is None else f.velocities[cut]
    forces = None if f.forces is None else f.forces[cut]
    return Frame(
        f.positions[cut], f.numbers[cut], velocities=v, forces=forces, energy=f.energy,
        cell=f.cell, pbc=f.pbc, step=f.step, time=f.time, source=f.source,
    )  # fmt: skip


def _pushed_atom(frames: list[Frame], at: int) -> int:
    before, after = frames[at - 1].positions, frames[at].positions
    return int(((after - before) ** 2).sum(axis=1).argmax())
