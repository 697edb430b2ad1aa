"""The live monitor: state from real pipeline runs, rendered to a recording console."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from rich.console import Console

from trajwatch.events import Event
from trajwatch.frame import Frame
from trajwatch.monitor.keys import KeyReader
from trajwatch.monitor.live import LiveView, ingest
from trajwatch.monitor.probe import QUANTITIES
from trajwatch.monitor.render import render, render_summary
from trajwatch.monitor.ring import Ring
from trajwatch.monitor.sparkline import sparkline
from trajwatch.monitor.state import MonitorState, Snapshot
from trajwatch.pipeline import Pipeline
from trajwatch.streaming import Publisher, Subscriber

WIDTH = 120


def text_of(renderable: object, width: int = WIDTH, height: int | None = None) -> str:
    console = Console(record=True, width=width, height=height or 200, color_system=None)
    console.print(renderable)
    return console.export_text()


def stamped(frame: Frame, wall_time: float) -> Frame:
    """The frame as a publisher would have stamped it (the fixtures are shared: no edits)."""
    return Frame(
        frame.positions, frame.numbers, velocities=frame.velocities, forces=frame.forces,
        energy=frame.energy, cell=frame.cell, pbc=frame.pbc, step=frame.step, time=frame.time,
        seq=frame.seq, source=frame.source, copy=False, wall_time=wall_time,
    )  # fmt: skip


def feed(
    frames: list[Frame], pipeline: Pipeline, state: MonitorState, *, latency: float = 0.002
) -> list[Event]:
    """Process frames as the ingest loop does, with a known send-to-receive latency."""
    events: list[Event] = []
    start = time.monotonic()
    for i, original in enumerate(frames):
        frame = stamped(original, 1_000.0 + i * 0.01)
        new = pipeline.process(frame)
        state.observe(
            frame,
            pipeline.sources[frame.source],
            new,
            wall=frame.wall_time + latency,
            now=start + i * 0.01,
        )
        events += new
    return events


@pytest.fixture(scope="module")
def watched(clean_frames: list[Frame], clash_frames: list[Frame]) -> tuple[Snapshot, list[Event]]:
    """A clean and a faulty source through one pipeline, interleaved as from a proxy."""
    pipeline, state = Pipeline(), MonitorState(endpoint="tcp://127.0.0.1:5555")
    events: list[Event] = []
    start = time.monotonic()
    for i, (a, b) in enumerate(zip(clean_frames, clash_frames, strict=True)):
        for frame in (a, b):
            new = pipeline.process(frame)
            state.observe(frame, pipeline.sources[frame.source], new, now=start + i * 0.01)
            events += new
    return state.snapshot(now=start + len(clean_frames) * 0.01), events


def test_snapshot_of_real_pipeline_state(
    watched: tuple[Snapshot, list[Event]], clash_at: int
) -> None:
    snapshot, events = watched
    assert [s.name for s in snapshot.sources] == ["clash", "clean"]
    clash, clean = snapshot.source("clash"), snapshot.source("clean")
    assert clash.frames == clean.frames == 300 and snapshot.frames == 600
    assert clean.status == "OK" and clean.alarms == 0 and clean.first_alarm is None
    anomaly = next(e for e in events if e.event == "anomaly")
    assert clash.alarms == 1 and clash.first_alarm == anomaly.frame
    assert clash_at <= anomaly.frame <= clash_at + 3
    assert clash.worst == "critical"
    assert clash.onset == anomaly.onset_frame
    assert clash.status == ("ALARM" if clash.alarm else "OK")
    assert clash.fps == pytest.approx(100.0, rel=0.05)  # frames 10 ms apart
    assert [s.key for s in clash.series] == ["score"] + [q.key for q in QUANTITIES]
    assert all(s.values.size == 300 for s in clash.series)
    assert not clash.series[0].values.flags.writeable  # a snapshot is immutable


def test_render_shows_status_counts_and_evidence(watched: tuple[Snapshot, list[Event]]) -> None:
    snapshot, events = watched
    anomaly = next(e for e in events if e.event == "anomaly")
    text = text_of(render(snapshot, width=WIDTH))
    assert "tcp://127.0.0.1:5555" in text and "2 sources" in text and "600 frames" in text
    assert "1 alarm" in text
    for name in ("clash", "clean"):
        assert name in text
    assert "300 frames" in text
    for label in ("score", "T", "E/atom", "d_min", "disp_max"):
        assert f"\n│ {label} " in text
    # the event log and the source panel carry the evidence
    assert "anomaly" in text and "critical" in text
    assert f"{anomaly.frame}" in text
    assert anomaly.features[0].name in text
    assert "atoms " + " ".join(str(a) for a in anomaly.atoms[:2]) in text
    clash = snapshot.source("clash")
    if clash.alarm:
        assert "ALARM" in text and f"alarm since frame {anomaly.frame}" in text
    else:
        assert f"last alarm: frame {anomaly.frame}, critical" in text
    assert "OK" in text


def test_render_fits_the_terminal_height(watched: tuple[Snapshot, list[Event]]) -> None:
    snapshot, _ = watched
    for height in (12, 24, 40):
        text = text_of(render(snapshot, width=100, height=height), width=100)
        assert len(text.rstrip("\n").splitlines()) <= height
    # room for one panel: the source with the worst status (then by name) gets it
    small = text_of(render(snapshot, width=100, height=24), width=100)
    assert "╭─  clash" in small and "╭─  clean" not in small
    assert "1 source panel hidden (no room)" in small


def test_summary_lists_every_source_and_the_alarm(watched: tuple[Snapshot, list[Event]]) -> None:
    snapshot, events = watched
    text = text_of(render_summary(snapshot))
    anomaly = next(e for e in events if e.event == "anomaly")
    assert "600 frames" in text
    assert f"frame {anomaly.frame}" in text and "critical" in text
    assert "malformed messages 0, frames lost 0" in text


def test_latency_percentiles_from_the_send_time(clean_frames: list[Frame]) -> None:
    state = MonitorState()
    feed(clean_frames[:200], Pipeline(), state, latency=0.004)
    view = state.snapshot().sources[0]
    assert view.latency_p50 == pytest.approx(0.004, abs=1e-6)
    assert view.latency_p99 == pytest.approx(0.004, abs=1e-6)
    assert "4.00/4.00 ms" in text_of(render(state.snapshot()))


def test_unknown_send_time_shows_no_latency(clean_frames: list[Frame]) -> None:
    pipeline, state = Pipeline(), MonitorState()
    frame = clean_frames[0]
    state.observe(frame, pipeline.sources.get(frame.source) or _process(pipeline, frame), [])
    view = state.snapshot().sources[0]
    assert view.latency_p50 is None
    assert "(no send time)" in text_of(render(state.snapshot()))


def _process(pipeline: Pipeline, frame: Frame) -> object:
    pipeline.process(frame)
    return pipeline.sources[frame.source]


def test_bookkeeping_is_bounded(clean_frames: list[Frame]) -> None:
    state = MonitorState(history=50, latencies=64, max_events=3)
    feed(clean_frames[:120], Pipeline(), state)
    view = state.snapshot().sources[0]
    assert view.frames == 120
    assert all(s.values.size == 50 for s in view.series)
    assert len(state.tracks[view.name].latency) == 64


def test_a_silent_source_turns_to_warning(clean_frames: list[Frame]) -> None:
    state = MonitorState(stall_after=10.0)
    feed(clean_frames[:60], Pipeline(), state)
    last = state.tracks["clean"].last_seen
    assert state.snapshot(now=last + 1).sources[0].status == "OK"
    quiet = state.snapshot(now=last + 30).sources[0]
    assert quiet.status == "WARNING" and quiet.note == "no frame for 30 s"
    assert quiet.fps == 0.0
    state.finished = True  # at the end of a stream, quiet is expected
    assert state.snapshot(now=last + 30).sources[0].status == "OK"


def test_ring_and_sparkline() -> None:
    ring = Ring(4)
    for v in range(10):
        ring.push(float(v))
    assert ring.values().tolist() == [6.0, 7.0, 8.0, 9.0] and ring.last() == 9.0
    line = sparkline(np.array([0.0, 1.0, 10.0, np.nan, np.inf]), 5, threshold=5.0)
    assert line.plain == "▁▂█ █"
    over = [span for span in line.spans if "red" in str(span.style)]
    assert len(over) == 2  # the value above the threshold and the infinity
    assert sparkline(np.arange(1000.0), 10).plain.endswith("█")  # buckets keep the peak


def test_ingest_stops_on_max_frames_and_idle(clean_frames: list[Frame]) -> None:
    frames = iter(clean_frames[:30])
    state = MonitorState()
    reason = ingest(lambda t: next(frames, None), Pipeline(), state, max_frames=10)
    assert reason == "max-frames" and state.frames == 10
    assert ingest(lambda t: next(frames, None), Pipeline(), state, idle_timeout=0.0) == "idle"
    assert state.frames == 30


@pytest.fixture
def pty() -> Iterator[tuple[int, object]]:
    """A real pseudo-terminal: (master fd, slave as a text stream)."""
    master, slave = os.openpty()
    stream = os.fdopen(slave, "r", encoding="utf-8")
    try:
        yield master, stream
    finally:
        stream.close()
        os.close(master)


def test_key_reader_on_a_terminal_restores_it(pty: tuple[int, object]) -> None:
    import termios

    master, stream = pty
    before = termios.tcgetattr(stream)  # type: ignore[arg-type]
    with KeyReader(stream) as keys:  # type: ignore[arg-type]
        assert keys.active
        assert keys.poll() is None
        os.write(master, b"q")
        deadline = time.monotonic() + 5
        got = None
        while got is None and time.monotonic() < deadline:
            got = keys.poll()
        assert got == "q"
    assert termios.tcgetattr(stream) == before  # type: ignore[arg-type]


def test_live_view_redraws_at_most_four_times_a_second_and_quits_on_q(
    clean_frames: list[Frame], pty: tuple[int, object]
) -> None:
    master, stream = pty
    console = Console(record=True, width=WIDTH, height=60, force_terminal=True)
    with (
        Publisher("tcp://127.0.0.1:*", topic="md") as publisher,
        Subscriber(publisher.endpoint) as subscriber,
    ):
        assert publisher.wait_for_subscriber(5.0)
        stop = threading.Event()

        def produce() -> None:
            for frame in clean_frames:
                if stop.is_set():
                    return
                publisher.send(frame)
                time.sleep(0.002)

        producer = threading.Thread(target=produce)
        view = LiveView(console, keys=KeyReader(stream))  # type: ignore[arg-type]
        state = MonitorState(endpoint=publisher.endpoint, stats=subscriber.stats)
        start = time.monotonic()
        view.start()
        producer.start()
        try:
            time.sleep(0.8)
            os.write(master, b"q")
            reason = ingest(subscriber.recv, Pipeline(), state, view=view, idle_timeout=10.0)
        finally:
            stop.set()
            producer.join()
            view.stop(state.snapshot())
        elapsed = time.monotonic() - start
    assert reason == "quit"
    assert state.frames > 0
    assert 1 <= view.draws <= 4 * elapsed + 2  # +1 for the final picture
    assert "md" in console.export_text()


def test_real_latency_over_a_socket(clean_frames: list[Frame]) -> None:
    with (
        Publisher("tcp://127.0.0.1:*", topic="md") as publisher,
        Subscriber(publisher.endpoint) as subscriber,
    ):
        assert publisher.wait_for_subscriber(5.0)
        for frame in clean_frames[:20]:
            publisher.send(frame)
        state = MonitorState(stats=subscriber.stats)
        ingest(subscriber.recv, Pipeline(), state, max_frames=20)
    view = state.snapshot().sources[0]
    assert view.latency_p50 is not None and view.latency_p99 is not None
    assert 0 < view.latency_p50 <= view.latency_p99 < 5.0


def test_a_broken_view_ends_the_run_instead_of_hiding(clean_frames: list[Frame]) -> None:
    import io

    out = io.StringIO()
    out.close()  # every write fails, as on a terminal that went away
    view = LiveView(Console(file=out, force_terminal=True, width=80), keys=KeyReader(None))
    view.start()
    frames = iter(clean_frames)
    with pytest.raises(RuntimeError, match="live view failed"):
        ingest(lambda t: next(frames, None), Pipeline(), MonitorState(), view=view)
    view.stop()  # the error was reported once; stopping is clean
