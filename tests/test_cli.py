"""The trajwatch command end to end: real files, real sockets on 127.0.0.1, real processes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
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
    for command in ("demo", "replay", "monitor", "scan"):
        assert command in out


@pytest.mark.parametrize("command", ["demo", "replay", "monitor", "scan"])
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


# -- scan reports ----------------------------------------------------------------------


def test_scan_writes_plot_feature_table_and_summary(
    clash_file: Path, clash_at: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trajwatch.features.engine import FeatureEngine

    png, table, dump = tmp_path / "clash.png", tmp_path / "clash.csv", tmp_path / "flagged"
    events = tmp_path / "events.jsonl"
    code = main(["scan", str(clash_file), "--events", str(events), "--plot", str(png),
                 "--features", str(table), "--dump", str(dump), "--context", "2"])  # fmt: skip
    assert code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    rows = table.read_text().splitlines()
    header = rows[0].split(",")
    assert header == ["frame", "step", "time", "source", "score", *FeatureEngine().names]
    assert len(rows) == 1 + 300
    first = rows[1].split(",")
    assert first[:4] == ["0", "0", "0.0", "clash"]
    alarm = next(e for e in _events(events) if e["event"] == "anomaly")
    assert float(rows[1 + alarm["frame"]].split(",")[4]) == pytest.approx(alarm["score"])  # type: ignore[arg-type, call-overload]
    assert [p.name for p in dump.iterdir()] == [f"clash_{alarm['frame']:06d}_critical.extxyz"]
    err = capsys.readouterr().err
    assert "clash.extxyz" in err and "300" in err
    assert f"frame {alarm['frame']}" in err and "critical" in err


def test_scan_of_several_files_plots_each(
    clean_file: Path, clash_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run.png"
    assert main(["scan", str(clean_file), str(clash_file), "--events", str(tmp_path / "e"),
                 "--plot", str(out), "--quiet"]) == 0  # fmt: skip
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["run-clash.png", "run-clean.png"]
    assert capsys.readouterr().err.count("plot: ") == 2


def test_scan_plot_without_matplotlib_is_a_clear_error(clash_file: Path, tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['matplotlib'] = None; from trajwatch.cli import main; "
        f"sys.exit(main(['scan', {str(clash_file)!r}, '--plot', {str(tmp_path / 'p.png')!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "pip install 'trajwatch[plot]'" in done.stderr
    assert not (tmp_path / "p.png").exists()


# -- monitor: the alarm sinks through the command line ---------------------------------


@pytest.mark.slow
def test_monitor_alerts_dump_and_on_alarm_command(
    clash_file: Path, clash_at: int, free_endpoint: str, tmp_path: Path
) -> None:
    import zmq

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        alerts = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    hook = tmp_path / "hook.jsonl"
    monitor = _start_monitor(
        free_endpoint, tmp_path / "live.jsonl", "--lossless", "--bind",
        "--alerts", alerts, "--dump", str(tmp_path / "flagged"), "--context", "3",
        "--on-alarm", f"cat >> {hook}",
    )  # fmt: skip
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVTIMEO, 60_000)
    events = sub.get_monitor_socket(zmq.EVENT_CONNECTED)
    events.setsockopt(zmq.RCVTIMEO, 60_000)
    sub.connect(alerts)
    sub.subscribe(b"anomaly/")
    try:
        # the monitor binds its alert socket before it takes frames: once connected, the
        # subscription travels ahead of any frame the replay sends
        events.recv_multipart()
        code = main(["replay", str(clash_file), "--endpoint", free_endpoint, "--max",
                     "--lossless", "--connect", "--wait", "30"])  # fmt: skip
        assert code == 0
        topic, body = sub.recv_multipart()
        _, stderr = monitor.communicate(timeout=60)
    finally:
        sub.disable_monitor()
        events.close()
        sub.close()
        monitor.kill()
    assert monitor.returncode == 0, stderr
    alarm = json.loads(body)
    assert topic == b"anomaly/clash" and clash_at <= alarm["frame"] <= clash_at + 3
    assert alarm == _events(tmp_path / "live.jsonl")[0]
    deadline = time.monotonic() + 10
    while not hook.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert json.loads(hook.read_text()) == alarm
    dumped = list((tmp_path / "flagged").iterdir())
    assert [p.name for p in dumped] == [f"clash_{alarm['frame']:06d}_critical.extxyz"]
    assert dumped[0].read_text().count("Properties=") == 7


def test_a_slow_compile_says_what_the_wait_is(capsys: pytest.CaptureFixture[str]) -> None:
    """A first run compiles for tens of seconds before the first line of output: the
    user is told why once the wait passes the threshold, and not at all when it does not."""
    from trajwatch.cli import _notice_if_slow

    with _notice_if_slow(0.05, "compiling the kernels"):
        time.sleep(0.5)
    assert capsys.readouterr().err == "compiling the kernels\n"
    with _notice_if_slow(5.0, "compiling the kernels"):
        pass
    assert capsys.readouterr().err == ""


_SCAN_COUNTING_COMPILES = """
import sys
from numba.core.registry import CPUDispatcher
from trajwatch.cli import _compile, main

def compiled():  # signatures of every trajwatch kernel loaded so far (cached or compiled)
    return {f"{m.__name__}.{name}": len(k.signatures) for m in list(sys.modules.values())
            if getattr(m, "__name__", "").startswith("trajwatch")
            for name, k in vars(m).items() if isinstance(k, CPUDispatcher)}

_compile("scan", reader=True)
before = compiled()
code = main(["scan", sys.argv[1], "--events", sys.argv[2]])
print({k: (before.get(k, 0), n) for k, n in compiled().items() if n != before.get(k, 0)})
sys.exit(code)
"""


def test_scan_compiles_every_kernel_before_the_first_frame(
    clash_file: Path, tmp_path: Path
) -> None:
    """The reader's kernels too: on a first run they took seconds at the first frame. A
    fresh interpreter, since a kernel an earlier test compiled would hide a lazy one."""
    events = tmp_path / "e.jsonl"
    done = subprocess.run(
        [sys.executable, "-c", _SCAN_COUNTING_COMPILES, str(clash_file), str(events)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "{}"
    assert _events(events)[0]["event"] == "anomaly"
