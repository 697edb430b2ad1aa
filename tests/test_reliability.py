"""A real ``trajwatch monitor`` process under restarts, silences, overload and ``kill -9``;
checkpoints of what its detectors learned.

The engine side is an in-process :class:`Publisher` (as an engine adapter would use it),
the monitor a separate process, talking over tcp://127.0.0.1 on a free port. Each wait
has a timeout; the monitor's stdout (one JSON event per line) is the synchronisation
point, never a sleep that hopes the other side is done.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trajwatch.checkpoint import (
    Checkpoint,
    Checkpointer,
    load_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from trajwatch.frame import Frame
from trajwatch.pipeline import Pipeline, PipelineConfig
from trajwatch.simulate import MDSpec, run_md
from trajwatch.stall import StallWatch
from trajwatch.streaming import Publisher

TIMEOUT = 60.0  # seconds; covers the monitor's start (kernel compilation) on a busy machine


class Monitor:
    """A ``trajwatch monitor --no-tui`` process; its stdout lines arrive on a queue."""

    def __init__(self, tmp_path: Path, endpoint: str, *extra: str, name: str = "monitor"):
        self.events = tmp_path / f"{name}.jsonl"
        self.stderr_path = tmp_path / f"{name}.stderr"
        self._stderr = open(self.stderr_path, "w")  # noqa: SIM115 (closed in finish)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trajwatch", "monitor", "--no-tui", "--endpoint", endpoint,
             "--events", str(self.events), *extra],
            stdout=subprocess.PIPE, stderr=self._stderr, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        self.printed: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_event(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = TIMEOUT
    ) -> dict[str, Any]:
        """The next printed event that ``match`` accepts (earlier ones are kept)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or (self.proc.poll() is not None and self.lines.empty()):
                pytest.fail(f"no matching event; monitor said: {self.stderr()}")
            try:
                line = self.lines.get(timeout=min(left, 0.2))
            except queue.Empty:
                continue
            self.printed.append(line)
            event: dict[str, Any] = json.loads(line)
            if match(event):
                return event

    def drain(self) -> None:
        """After the process ended: move what it printed last into ``printed``."""
        self._reader.join(TIMEOUT)
        while not self.lines.empty():
            self.printed.append(self.lines.get())

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text()

    def stop(self) -> str:
        """SIGTERM (the monitor closes its log and prints its summary); its stderr."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(TIMEOUT)
        self.drain()
        assert self.proc.returncode == 0, self.stderr()
        return self.stderr()

    def logged(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.events.read_text().splitlines()]

    def finish(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


@pytest.fixture
def monitors() -> Iterator[list[Monitor]]:
    started: list[Monitor] = []
    yield started
    for monitor in started:
        monitor.finish()


def summary(stderr: str) -> dict[str, int]:
    """The counters of the monitor's summary line."""
    line = next(x for x in stderr.splitlines() if re.search(r"\d+ frames from", x))
    counts = {"frames": int(re.search(r"(\d+) frames from", line).group(1))}  # type: ignore[union-attr]
    for name in ("malformed", "lost", "restarts", "stalls"):
        found = re.search(rf"{name} (\d+)", line)
        if found:
            counts[name] = int(found.group(1))
    return counts


def send_all(pub: Publisher, frames: list[Frame]) -> None:
    for frame in frames:
        assert pub.send(frame)


# -- StallWatch on its own (the clock is an argument) ---------------------------------


def tiny(source: str, seq: int, step: int | None = None) -> Frame:
    return Frame(np.zeros((1, 3)), [1], source=source, seq=seq, step=seq if step is None else step)


def test_stall_watch_one_event_per_silence_per_source() -> None:
    watch = StallWatch(2.0)
    assert watch.check(0.0) == []
    for t in range(5):
        watch.seen(tiny("a", t), float(t))
        watch.seen(tiny("b", t), float(t))
    # b goes on, a falls silent after t=4
    for t in range(5, 12):
        watch.seen(tiny("b", t), float(t))
        events = watch.check(t + 0.5)
        assert [(e.event, e.source) for e in events] == ([("stalled", "a")] if t == 6 else [])
    assert watch.stalled == ["a"]
    (resumed,) = watch.seen(tiny("a", 12), 20.0)  # seq 5..11 never arrived
    assert (resumed.event, resumed.frame, resumed.score) == ("resumed", 5, 16.0)
    assert "7 frames missing" in resumed.message
    assert watch.stalled == [] and watch.stalls == 1 and watch.stalled_seconds == 16.0
    # a restarted publisher numbers from 0 again
    watch.check(30.0)
    (again,) = watch.seen(tiny("a", 0), 31.0)
    assert "restarted" in again.message
    assert watch.sources["a"].stalls == 2 and watch.sources["b"].stalls == 1


def test_stall_watch_sees_a_new_source_after_a_quiet_check() -> None:
    watch = StallWatch(1.0)
    watch.seen(tiny("a", 0), 0.0)
    assert watch.check(0.5) == []
    watch.seen(tiny("late", 0), 0.6)  # its deadline (1.6) is after a's (1.0)
    assert [e.source for e in watch.check(1.2)] == ["a"]
    assert [e.source for e in watch.check(1.7)] == ["late"]


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("nan"), float("inf")])
def test_stall_timeout_must_be_positive(timeout: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        StallWatch(timeout)


# -- the monitor process ---------------------------------------------------------------


@pytest.mark.slow
def test_publisher_restart_and_silence_are_reported_and_the_monitor_goes_on(
    clean_frames: list[Frame], free_endpoint: str, tmp_path: Path, monitors: list[Monitor]
) -> None:
    monitor = Monitor(tmp_path, free_endpoint, "--stall-timeout", "0.5")
    monitors.append(monitor)
    with Publisher(free_endpoint) as first:
        assert first.wait_for_subscriber(TIMEOUT)
        send_all(first, clean_frames[:100])
        stalled = monitor.wait_event(lambda e: e["event"] == "stalled")
    # the engine died; a new one starts on the same address and carries on
    with Publisher(free_endpoint) as second:
        assert second.wait_for_subscriber(TIMEOUT)
        send_all(second, clean_frames[100:200])
        resumed = monitor.wait_event(lambda e: e["event"] == "resumed")
        stalled_again = monitor.wait_event(lambda e: e["event"] == "stalled")
    counts = summary(monitor.stop())
    assert (stalled["frame"], stalled["step"], stalled["severity"]) == (99, 99, "high")
    assert stalled["source"] == "clean" and stalled["score"] >= 0.5
    assert resumed["frame"] == 100 and "restarted" in resumed["message"]
    assert stalled_again["frame"] == 199  # the pipeline went on counting the same stream
    assert counts == {"frames": 200, "malformed": 0, "lost": 0, "restarts": 1, "stalls": 2}
    logged = [e for e in monitor.logged() if e["detector"] == "stall"]
    assert logged == [stalled, resumed, stalled_again]


@pytest.mark.slow
def test_killed_monitor_leaves_every_printed_event_in_its_log(
    clash_frames: list[Frame],
    clash_at: int,
    free_endpoint: str,
    tmp_path: Path,
    monitors: list[Monitor],
) -> None:
    monitor = Monitor(tmp_path, free_endpoint, "--stall-timeout", "0")
    monitors.append(monitor)
    with Publisher(free_endpoint) as pub:
        assert pub.wait_for_subscriber(TIMEOUT)
        send_all(pub, clash_frames)
        alarm = monitor.wait_event(lambda e: e["event"] == "anomaly")
        monitor.proc.kill()  # SIGKILL the moment the alarm is on stdout: no cleanup runs
        monitor.proc.wait(TIMEOUT)
        monitor.drain()
    assert monitor.proc.returncode == -signal.SIGKILL
    assert clash_at <= alarm["frame"] <= clash_at + 3
    # the log is written (and flushed) before stdout: all that was printed is in it
    lines = monitor.events.read_text().splitlines()
    assert lines[: len(monitor.printed)] == monitor.printed
    assert json.loads(lines[len(monitor.printed) - 1]) == alarm
    # a monitor restarted on the same log with --append keeps what the dead one wrote
    again = Monitor(tmp_path, free_endpoint, "--append", "--stall-timeout", "0.3")
    monitors.append(again)
    with Publisher(free_endpoint) as pub:
        assert pub.wait_for_subscriber(TIMEOUT)
        send_all(pub, clash_frames[:5])
        again.wait_event(lambda e: e["event"] == "stalled")
    again.stop()
    after = again.events.read_text().splitlines()
    assert after[: len(lines)] == lines and json.loads(after[-1])["event"] == "stalled"


@pytest.mark.slow
def test_monitor_restart_never_blocks_the_engine(
    clean_frames: list[Frame], free_endpoint: str, tmp_path: Path, monitors: list[Monitor]
) -> None:
    with Publisher(free_endpoint, topic="md") as pub:
        first = Monitor(tmp_path, free_endpoint, "--stall-timeout", "0.5", name="first")
        monitors.append(first)
        assert pub.wait_for_subscriber(TIMEOUT)
        send_all(pub, clean_frames[:50])
        first.wait_event(lambda e: e["event"] == "stalled")
        first.proc.kill()
        first.proc.wait(TIMEOUT)
        # nobody listens: the engine's sends return at once, and it notices the monitor left
        deadline = time.monotonic() + TIMEOUT
        for frame in clean_frames[50:150]:
            pub.send(frame)
        while pub.wait_for_subscriber(0):
            pub.send(clean_frames[0])
            time.sleep(0.01)
            assert time.monotonic() < deadline
        second = Monitor(tmp_path, free_endpoint, "--stall-timeout", "0.5", name="second")
        monitors.append(second)
        assert pub.wait_for_subscriber(TIMEOUT)
        send_all(pub, clean_frames[150:250])
        stalled = second.wait_event(lambda e: e["event"] == "stalled")
        counts = summary(second.stop())
    assert pub.sent + pub.dropped == pub.next_seq() >= 250
    # the new monitor starts with the first frame it sees: nothing before it is "lost"
    assert counts == {"frames": 100, "malformed": 0, "lost": 0, "restarts": 0, "stalls": 1}
    assert stalled["frame"] == 99


@pytest.mark.slow
def test_overloaded_monitor_drops_counts_and_logs_while_the_engine_runs_free(
    clean_frames: list[Frame], free_endpoint: str, tmp_path: Path, monitors: list[Monitor]
) -> None:
    monitor = Monitor(tmp_path, free_endpoint, "--stall-timeout", "1")
    monitors.append(monitor)
    burst = 20_000
    with Publisher(free_endpoint, topic="md", hwm=50) as pub:
        assert pub.wait_for_subscriber(TIMEOUT)

        def engine() -> None:  # far faster than the monitor's detection can follow
            for i in range(burst):
                pub.send(clean_frames[i % len(clean_frames)])

        thread = threading.Thread(target=engine)
        thread.start()
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "the engine blocked on a slow monitor"
        assert pub.dropped > 0 and pub.sent + pub.dropped == burst
        monitor.wait_event(lambda e: e["event"] == "stalled")  # it has caught up
        # one more frame after the catch-up, so the monitor sees the gap before it
        assert pub.send(clean_frames[0])
        resumed = monitor.wait_event(lambda e: e["event"] == "resumed")
        monitor.wait_event(lambda e: e["event"] == "stalled")  # the last frame is processed
        counts = summary(monitor.stop())
    assert "frames missing" in resumed["message"]  # dropped at the tail of the burst
    assert counts["lost"] == pub.dropped
    assert counts["frames"] == pub.sent
    assert "frames lost on" in monitor.stderr()


@pytest.mark.slow
def test_monitor_limits_reject_frames_that_are_too_big(
    clean_frames: list[Frame], free_endpoint: str, tmp_path: Path, monitors: list[Monitor]
) -> None:
    # 108 atoms per frame: over --max-atoms 100; a 32-atom frame passes
    monitor = Monitor(tmp_path, free_endpoint, "--max-atoms", "100", "--max-bytes", "4K",
                      "--stall-timeout", "0.5")  # fmt: skip
    monitors.append(monitor)
    small = Frame(np.random.default_rng(0).normal(size=(32, 3)) * 3, [29] * 32, source="small")
    with Publisher(free_endpoint) as pub:
        assert pub.wait_for_subscriber(TIMEOUT)
        send_all(pub, clean_frames[:5])
        send_all(pub, [small])
        monitor.wait_event(lambda e: e["event"] == "stalled")
    stderr = monitor.stop()
    counts = summary(stderr)
    assert (counts["frames"], counts["malformed"]) == (1, 5)
    assert "exceeds the limit of 100" in stderr


# -- checkpoints: saved atomically, restored exactly, baseline kept across a restart ----

RESTART = 300
"""Frames the first monitor sees before it is restarted."""


@pytest.fixture(scope="module")
def dt_run() -> list[Frame]:
    """A run whose timestep blows up 60 frames after the restart."""
    return list(
        run_md(MDSpec(steps=400, repeat=2, seed=5, source="md", fault="dt", fault_frame=360))
    )


@pytest.fixture(scope="module")
def learned(clean_frames: list[Frame]) -> Pipeline:
    pipeline = Pipeline()
    for frame in clean_frames[:RESTART]:
        pipeline.process(frame)
    return pipeline


def saved_frames(path: Path) -> dict[str, int]:
    """Frames per source in the checkpoint at ``path`` ({} while there is none)."""
    return load_checkpoint(path).frames() if path.exists() else {}


def anomalies(pipeline: Pipeline, frames: list[Frame]) -> list[tuple[int, str]]:
    return [
        (e.frame, e.severity) for f in frames for e in pipeline.process(f) if e.event == "anomaly"
    ]


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_round_trip_restores_the_model_and_the_frame_index(
    learned: Pipeline, tmp_path: Path, suffix: str
) -> None:
    path = save_checkpoint(learned, tmp_path / f"ckpt{suffix}")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left
    checkpoint = load_checkpoint(path)
    assert checkpoint.frames() == {"clean": RESTART}
    again = Pipeline()
    assert restore_checkpoint(again, checkpoint) == ["clean"]
    before, after = learned.sources["clean"], again.sources["clean"]
    assert after.frames == RESTART
    probe = np.random.default_rng(0).normal(size=len(before.names))
    for a, b in zip(before.stack.detectors, after.stack.detectors, strict=True):
        assert a.score_one(probe) == b.score_one(probe)
    for a, b in zip(before.stack.calibrators, after.stack.calibrators, strict=True):
        assert a.n == b.n > 0 and a.surprise(3.0) == b.surprise(3.0)


_SAVER = r"""
import sys
import numpy as np
from trajwatch.checkpoint import save_checkpoint
from trajwatch.frame import Frame
from trajwatch.pipeline import Pipeline

rng = np.random.default_rng(0)
sites = np.array([[i, j, k] for i in range(2) for j in range(2) for k in range(2)]) * 2.5
pipelines = []
for n in (60, 61):
    pipeline = Pipeline()
    for step in range(n):
        pipeline.process(Frame(sites + rng.normal(scale=0.05, size=sites.shape), [29] * 8,
                               step=step, source="md"))
    pipelines.append(pipeline)
save_checkpoint(pipelines[0], sys.argv[1])
print("ready", flush=True)
while True:
    for pipeline in pipelines:
        save_checkpoint(pipeline, sys.argv[1])
"""


@pytest.mark.slow
def test_a_save_killed_midway_leaves_a_whole_checkpoint(tmp_path: Path) -> None:
    """kill -9 a process that saves in a loop: the file is always the old or the new one."""
    path = tmp_path / "ckpt.npz"
    rng = np.random.default_rng(1)
    for _ in range(4):
        saver = subprocess.Popen(
            [sys.executable, "-c", _SAVER, str(path)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert saver.stdout is not None and saver.stdout.readline() == "ready\n"
            time.sleep(float(rng.uniform(0.05, 0.5)))
        finally:
            saver.kill()
            saver.wait(TIMEOUT)
            if saver.stdout is not None:
                saver.stdout.close()
        assert load_checkpoint(path).frames() in ({"md": 60}, {"md": 61})
    # a temp file may be left by the kill; it is never what a restart reads
    assert all(p.name == "ckpt.npz" or p.name.startswith(".ckpt.tmp-") for p in tmp_path.iterdir())


def test_unreadable_or_foreign_checkpoints_start_afresh(
    learned: Pipeline, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = tmp_path / "broken.npz"
    broken.write_bytes(save_checkpoint(learned, tmp_path / "good.npz").read_bytes()[:500])
    caplog.set_level(logging.WARNING, logger="trajwatch.checkpoint")
    assert Checkpointer(Pipeline(), broken).restore() == []
    assert "starting afresh" in caplog.text
    # made with other detector settings: that source starts afresh, with a warning
    other = Pipeline(PipelineConfig(threshold=9.0))
    assert restore_checkpoint(other, load_checkpoint(tmp_path / "good.npz")) == []
    assert "other detector settings" in caplog.text and not other.sources


def test_checkpointer_saves_when_due_and_only_after_new_frames(
    clean_frames: list[Frame], tmp_path: Path
) -> None:
    now = [0.0]
    pipeline = Pipeline()
    checkpointer = Checkpointer(pipeline, tmp_path / "c.npz", every=10.0, clock=lambda: now[0])
    assert not checkpointer.maybe_save()  # nothing yet
    pipeline.process(clean_frames[0])
    now[0] = 5.0
    assert not checkpointer.maybe_save()  # not due
    now[0] = 10.0
    assert checkpointer.maybe_save() and checkpointer.saves == 1
    now[0] = 25.0
    assert not checkpointer.maybe_save()  # due, but no new frame since
    pipeline.process(clean_frames[1])
    now[0] = 40.0
    assert checkpointer.maybe_save() and checkpointer.saves == 2
    assert load_checkpoint(tmp_path / "c.npz").frames() == {"clean": 2}


def test_restored_monitor_is_quiet_on_a_clean_run(
    learned: Pipeline, clean_frames: list[Frame]
) -> None:
    again = Pipeline()
    restore_checkpoint(again, Checkpoint.from_state(Checkpoint.of(learned).get_state()))
    assert anomalies(again, clean_frames[RESTART:]) == []


def test_restored_monitor_catches_a_fault_soon_after_the_restart_like_an_uninterrupted_one(
    dt_run: list[Frame],
) -> None:
    uninterrupted = Pipeline()
    expected = anomalies(uninterrupted, dt_run)
    assert expected and expected[0][0] == 360
    first = Pipeline()
    anomalies(first, dt_run[:RESTART])
    again = Pipeline()
    restore_checkpoint(again, Checkpoint.from_state(Checkpoint.of(first).get_state()))
    assert anomalies(again, dt_run[RESTART:]) == expected
    # the restored stack had a settled calibration at once; a fresh one has not yet
    fresh = Pipeline()
    anomalies(fresh, dt_run[RESTART : RESTART + 60])
    settle = again.config.settle_calibration
    assert again.sources["md"].stack.calibrators[0].n >= settle
    assert fresh.sources["md"].stack.calibrators[0].n < settle


@pytest.mark.slow
def test_monitor_restarted_after_kill_resumes_from_its_checkpoint(
    dt_run: list[Frame], free_endpoint: str, tmp_path: Path, monitors: list[Monitor]
) -> None:
    checkpoint = tmp_path / "state.npz"
    options = ("--checkpoint", str(checkpoint), "--checkpoint-every", "0.2")
    first = Monitor(tmp_path, free_endpoint, *options, "--stall-timeout", "0.3", name="first")
    monitors.append(first)
    with Publisher(free_endpoint) as pub:
        assert pub.wait_for_subscriber(TIMEOUT)
        send_all(pub, dt_run[:RESTART])
        first.wait_event(lambda e: e["event"] == "stalled")  # all processed
        # the next checkpoint after the stall has every frame
        deadline = time.monotonic() + TIMEOUT
        while saved_frames(checkpoint) != {"md": RESTART}:
            assert time.monotonic() < deadline, "no checkpoint with every frame"
            time.sleep(0.05)
        first.proc.kill()
        first.proc.wait(TIMEOUT)
        assert first.proc.returncode == -signal.SIGKILL
    second = Monitor(tmp_path, free_endpoint, *options, "--append", "--stall-timeout", "0.5")
    monitors.append(second)
    with Publisher(free_endpoint) as pub:
        assert pub.wait_for_subscriber(TIMEOUT)
        send_all(pub, dt_run[RESTART:])
        alarm = second.wait_event(lambda e: e["event"] == "anomaly")
        second.wait_event(lambda e: e["event"] == "stalled")
    stderr = second.stop()
    assert f"restored from {checkpoint}: md at frame {RESTART}" in stderr
    assert (alarm["frame"], alarm["severity"]) == (360, "critical")
    assert load_checkpoint(checkpoint).frames() == {"md": len(dt_run)}  # saved at exit
