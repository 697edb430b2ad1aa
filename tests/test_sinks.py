"""Sinks: the JSONL log, the alert socket, the alarm command and callback, the frame dump."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from trajwatch.events import Event, FeatureDeviation
from trajwatch.frame import Frame
from trajwatch.pipeline import Pipeline
from trajwatch.sinks import AlarmCallback, AlarmCommand, AlertPublisher, FrameDump, JsonlSink

TIMEOUT_MS = 5000


def anomaly(source: str = "md", frame: int = 7, severity: str = "critical") -> Event:
    return Event(
        "anomaly", frame=frame, step=10 * frame, time=2.0 * frame, source=source,
        detector="zscore", score=41.5, threshold=8.0, severity=severity,
        onset_frame=frame - 1, features=[FeatureDeviation("disp_max", 1.4, 880.0)],
        atoms=[3, 17],
    )  # fmt: skip


def recovered(source: str = "md", frame: int = 20) -> Event:
    return Event("recovered", frame, 10 * frame, None, source, "zscore", 1.0, 8.0, "warning")


# -- JSONL ----------------------------------------------------------------------------


@pytest.mark.parametrize("fsync", [False, True])
def test_jsonl_line_is_on_disk_as_soon_as_emitted(tmp_path: Path, fsync: bool) -> None:
    path = tmp_path / "events.jsonl"
    sink = JsonlSink(path, fsync=fsync)
    try:
        sink.emit(anomaly())
        # another reader sees the whole line before the sink is closed
        assert Event.from_json(path.read_text().splitlines()[0]) == anomaly()
        sink.emit(recovered())
        assert len(path.read_text().splitlines()) == 2
    finally:
        sink.close()


# -- alert socket ---------------------------------------------------------------------


def subscribe(endpoint: str, *topics: bytes) -> zmq.Socket[Any]:
    socket: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.SUB)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RCVTIMEO, TIMEOUT_MS)
    socket.connect(endpoint)
    for topic in topics:
        socket.subscribe(topic)
    return socket


def test_alert_socket_republishes_events_as_json() -> None:
    alerts = AlertPublisher("tcp://127.0.0.1:*")
    sub = subscribe(alerts.endpoint, b"anomaly")
    try:
        # PUB drops what it sends before the subscription arrives: send until it is there
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while not sub.poll(50):
            assert time.monotonic() < deadline, "no alert arrived"
            alerts.emit(anomaly(frame=1))
        while sub.poll(50):
            sub.recv_multipart()
        alerts.emit(recovered("md"))  # filtered out by the subscriber's prefix
        alerts.emit(anomaly("md2", frame=9))
        topic, body = sub.recv_multipart()
        assert topic == b"anomaly/md2"
        assert Event.from_json(body.decode()) == anomaly("md2", frame=9)
        assert json.loads(body)["atoms"] == [3, 17]
        assert not sub.poll(100)
    finally:
        sub.close()
        alerts.close()


def test_alert_socket_binds_loopback_only_unless_allowed() -> None:
    with pytest.raises(ValueError, match="allow_remote"):
        AlertPublisher("tcp://0.0.0.0:*")


# -- alarm command and callback -------------------------------------------------------


def test_alarm_command_gets_the_event_on_stdin_and_in_env(tmp_path: Path) -> None:
    script = tmp_path / "hook.py"
    script.write_text(
        "import json, os, sys\n"
        "event = json.loads(sys.stdin.read())\n"
        "with open(os.environ['OUT'], 'a') as out:\n"
        "    out.write(json.dumps([event, os.environ['TRAJWATCH_SEVERITY'],\n"
        "                          os.environ['TRAJWATCH_FRAME'],\n"
        "                          json.loads(os.environ['TRAJWATCH_EVENT'])]) + '\\n')\n"
    )
    out = tmp_path / "calls.jsonl"
    os.environ["OUT"] = str(out)
    try:
        sink = AlarmCommand(f'"{sys.executable}" "{script}"')
        # event text that a shell would run if it were pasted into the command line
        nasty = anomaly(source="md; touch PWNED $(touch PWNED2)")
        sink.emit(nasty)
        sink.emit(recovered())  # not an anomaly: no command
        sink.close(wait=30)
    finally:
        del os.environ["OUT"]
    calls = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(calls) == 1 and sink.started == 1 and sink.failed == 0
    stdin_event, severity, frame, env_event = calls[0]
    assert Event.from_dict(stdin_event) == nasty == Event.from_dict(env_event)
    assert (severity, frame) == ("critical", "7")
    assert not list(Path.cwd().glob("PWNED*")) and not list(tmp_path.glob("PWNED*"))


def test_alarm_command_does_not_wait_and_counts_failures(tmp_path: Path) -> None:
    sink = AlarmCommand("sleep 2")
    start = time.monotonic()
    sink.emit(anomaly())
    assert time.monotonic() - start < 1.5
    sink.close(wait=10)
    assert sink.started == 1 and sink.failed == 0
    failing = AlarmCommand("exit 3")
    failing.emit(anomaly())
    failing.close(wait=10)
    assert failing.failed == 1


def test_alarm_callback_filters_by_severity_and_fires_once() -> None:
    seen: list[int] = []
    sink = AlarmCallback(lambda e: seen.append(e.frame), min_severity="high", once=True)
    sink.emit(anomaly(frame=1, severity="warning"))
    sink.emit(recovered())
    sink.emit(anomaly(frame=2, severity="high"))
    sink.emit(anomaly(frame=3, severity="critical"))
    assert seen == [2]


# -- flagged-frame dump ---------------------------------------------------------------


def run_with_dump(frames: list[Frame], dump: FrameDump) -> list[Event]:
    pipeline = Pipeline(sinks=[dump])
    events: list[Event] = []
    for frame in frames:
        dump.observe(frame)
        events += pipeline.process(frame)
    dump.close()
    return events


def test_dump_writes_the_flagged_frame_with_context(
    clash_frames: list[Frame], tmp_path: Path
) -> None:
    from ase.io import read

    dump = FrameDump(tmp_path / "flagged", context=4)
    events = run_with_dump(clash_frames, dump)
    alarm = next(e for e in events if e.event == "anomaly")
    assert [p.name for p in dump.written] == [f"clash_{alarm.frame:06d}_{alarm.severity}.extxyz"]
    images = read(dump.written[0], index=":")
    assert len(images) == 9
    offsets = [atoms.info["offset"] for atoms in images]
    assert offsets == list(range(-4, 5))
    flagged = images[4]
    assert flagged.info["flagged"] is True and flagged.info["stream_frame"] == alarm.frame
    assert flagged.info["severity"] == alarm.severity
    assert flagged.info["onset_frame"] == alarm.onset_frame
    onset = clash_frames[alarm.onset_frame or alarm.frame]
    assert flagged.info["onset_time"] == pytest.approx(onset.time)
    # the frames are what the engine produced: positions, energy and forces survive
    original = clash_frames[alarm.frame]
    assert flagged.get_positions() == pytest.approx(original.positions)
    assert flagged.get_potential_energy() == pytest.approx(original.energy)
    assert flagged.get_velocities() == pytest.approx(original.velocities * 10.180505671156723)


def test_dump_at_the_end_of_the_stream_keeps_what_it_has(
    clash_frames: list[Frame], clash_at: int, tmp_path: Path
) -> None:
    from ase.io import read

    dump = FrameDump(tmp_path, context=20)
    events = run_with_dump(clash_frames[: clash_at + 5], dump)
    alarm = next(e for e in events if e.event == "anomaly")
    images = read(dump.written[0], index=":")
    after = clash_at + 5 - 1 - alarm.frame
    assert len(images) == 21 + after
    assert images[-1].info["offset"] == after
