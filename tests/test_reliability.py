"""A real ``trajwatch monitor`` process under restarts, silences, overload and ``kill -9``.

The engine side is an in-process :class:`Publisher` (as an engine adapter would use it),
the monitor a separate process, talking over tcp://127.0.0.1 on a free port. Each wait
has a timeout; the monitor's stdout (one JSON event per line) is the synchronisation
point, never a sleep that hopes the other side is done.
"""

from __future__ import annotations

import json
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

from trajwatch.frame import Frame
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
