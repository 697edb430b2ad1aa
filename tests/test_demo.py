"""``trajwatch demo``: a real MD engine in a background process, caught by the monitor."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trajwatch.cli import main

FAULT_AT = 200  # after warm-up and calibration of any detector stack
SHORT = ["--size", "2", "--at", str(FAULT_AT), "--frames", "240", "--rate", "400"]


@pytest.mark.slow
def test_headless_demo_catches_the_fault(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "events.jsonl"
    code = main(["demo", "--no-tui", *SHORT, "--fault", "clash", "--events", str(events),
                 "--dump", str(tmp_path / "flagged"), "--context", "3"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    printed = [json.loads(line) for line in out.splitlines()]
    logged = [json.loads(line) for line in events.read_text().splitlines()]
    assert printed == logged
    alarm = next(e for e in logged if e["event"] == "anomaly")
    assert FAULT_AT <= alarm["frame"] <= FAULT_AT + 3
    assert alarm["source"] == "Cu32-clash" and alarm["severity"] in ("high", "critical")
    assert "240 frames from 1 source(s)" in err
    assert f"fault injected at frame {FAULT_AT};" in err and "alarm at frame" in err
    assert len(list((tmp_path / "flagged").iterdir())) == 1
    assert not _engines_left()


def test_demo_without_ase_says_how_to_get_it() -> None:
    code = (
        "import sys; sys.modules['ase'] = None; from trajwatch.cli import main; "
        "sys.exit(main(['demo', '--no-tui']))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "pip install 'trajwatch[md]'" in done.stderr


@pytest.mark.slow
def test_live_demo_on_a_terminal_shows_the_alarm_and_quits_on_q(tmp_path: Path) -> None:
    master, slave = os.openpty()
    env = {**os.environ, "COLUMNS": "110", "LINES": "45", "TERM": "xterm-256color"}
    process = subprocess.Popen(
        [sys.executable, "-m", "trajwatch", "demo", "--size", "2", "--at", str(FAULT_AT),
         "--frames", "2000", "--rate", "100", "--events", str(tmp_path / "events.jsonl")],
        stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    screen = b""
    try:
        deadline = time.monotonic() + 120
        while b"ALARM" not in screen and time.monotonic() < deadline:
            screen += _read(master, 0.5)
        assert b"ALARM" in screen, screen[-2000:].decode(errors="replace")
        os.write(master, b"q")
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline:
            screen += _read(master, 0.2)
        screen += _read(master, 0.2)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        os.close(master)
    assert process.returncode == 0
    text = screen.decode("utf-8", errors="replace")
    assert "trajwatch demo (clash at frame 200)" in text
    assert "first alarm" in text and "critical" in text  # the summary after the live view
    assert "fault injected at frame 200" in text
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert events and events[0]["event"] == "anomaly"
    assert not _engines_left()


def _read(fd: int, timeout: float) -> bytes:
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return b""
    try:
        return os.read(fd, 65536)
    except OSError:  # the terminal's other side has closed
        return b""


def _engines_left() -> bool:
    """True if a demo engine started by this test process is still running."""
    done = subprocess.run(["ps", "-eo", "ppid,args"], capture_output=True, text=True)
    mine = str(os.getpid())
    return any(
        line.split(None, 1)[0] == mine and "trajwatch.demo" in line
        for line in done.stdout.splitlines()[1:]
    )
