"""The trajwatch command end to end: real files, real sockets on 127.0.0.1, real processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trajwatch.cli import main


def _events(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _start_monitor(endpoint: str, events: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "trajwatch", "monitor", "--no-tui", "--endpoint", endpoint,
         "--events", str(events), "--idle-timeout", "2", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("replay", "monitor", "scan"):
        assert command in out


@pytest.mark.parametrize("command", ["replay", "monitor", "scan"])
def test_each_command_has_examples(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == 0
    assert f"trajwatch {command}" in capsys.readouterr().out.split("examples:")[1]


def test_scan_writes_the_clash_alarm(clash_file: Path, clash_at: int, tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    assert main(["scan", str(clash_file), "--events", str(out), "--quiet"]) == 0
    anomalies = [e for e in _events(out) if e["event"] == "anomaly"]
    assert len(anomalies) == 1
    assert clash_at <= anomalies[0]["frame"] <= clash_at + 3  # type: ignore[operator]


def test_scan_of_a_missing_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["scan", str(tmp_path / "nope.xyz"), "--quiet"]) == 1
    assert "nope.xyz" in capsys.readouterr().err


@pytest.mark.slow
def test_replay_into_live_monitor_raises_the_same_alarm_as_scan(
    clash_file: Path, clash_at: int, free_endpoint: str, tmp_path: Path
) -> None:
    live = tmp_path / "live.jsonl"
    monitor = _start_monitor(free_endpoint, live, "--lossless", "--bind")
    try:
        code = main(["replay", str(clash_file), "--endpoint", free_endpoint, "--max",
                     "--lossless", "--connect", "--wait", "20"])  # fmt: skip
        assert code == 0
        stdout, stderr = monitor.communicate(timeout=60)
    finally:
        monitor.kill()
    assert monitor.returncode == 0, stderr
    assert "300 frames" in stderr
    live_events = _events(live)
    assert [json.loads(line) for line in stdout.splitlines()] == live_events

    offline = tmp_path / "offline.jsonl"
    assert main(["scan", str(clash_file), "--events", str(offline), "--quiet"]) == 0
    assert live_events == _events(offline)
    alarm = live_events[0]
    assert alarm["event"] == "anomaly" and clash_at <= alarm["frame"] <= clash_at + 3  # type: ignore[operator]


@pytest.mark.slow
def test_paced_replay_over_pub_sub_is_caught_live(
    clash_file: Path, clash_at: int, free_endpoint: str, tmp_path: Path
) -> None:
    live = tmp_path / "live.jsonl"
    monitor = _start_monitor(free_endpoint, live)
    try:
        code = main(["replay", str(clash_file), "--endpoint", free_endpoint, "--rate", "500",
                     "--wait", "20"])  # fmt: skip
        assert code == 0
        _, stderr = monitor.communicate(timeout=60)
    finally:
        monitor.kill()
    assert monitor.returncode == 0, stderr
    anomalies = [e for e in _events(live) if e["event"] == "anomaly"]
    assert len(anomalies) == 1, stderr
    assert clash_at <= anomalies[0]["frame"] <= clash_at + 3  # type: ignore[operator]
