"""Soak: a million frames through ``trajwatch replay`` -> ``trajwatch monitor``, watched.

Two real processes talk lossless PUSH/PULL over tcp://127.0.0.1: ``replay --loop --max
--lossless --max-frames N`` of a small extxyz file (16 Cu atoms, 200 frames of thermal
motion around a lattice, so nothing should alarm) and ``monitor --no-tui --lossless
--bind --events ...``. While they run, this script samples each process's resident
memory, open file descriptors (sockets, and the rest: files, pipes, eventfds, epoll) and
threads from ``/proc`` every ``interval`` seconds.

What it checks:

* every frame arrives and is processed (the monitor's summary line: frames, lost);
* bounded memory: the monitor's RSS at the end is within 50 MB of its RSS after the
  first 10,000 frames (frames are estimated from the replay's steady rate);
* no leaks: neither process holds more file descriptors, sockets or threads at the end
  (the last sample while frames still flow) than after the first 10,000 frames (the
  replay re-opens its file on every loop).

    python benchmarks/bench_soak.py            # 1,000,000 frames, 3-6 minutes
    python benchmarks/bench_soak.py --quick --json soak.json   # 30,000 frames
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

try:
    import trajwatch
except ImportError:  # running from a source checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import trajwatch

from trajwatch.frame import Frame
from trajwatch.replay.xyz import write_extxyz

FULL_FRAMES = 1_000_000
QUICK_FRAMES = 30_000
BASELINE_FRAMES = 10_000
RSS_BUDGET_MB = 50.0


@dataclass
class Sample:
    """One look at a process in /proc."""

    t: float
    rss_mb: float
    fds: int
    sockets: int
    threads: int


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except FileNotFoundError:  # closed while we looked
        return "closed"


def sample(pid: int, t0: float) -> Sample | None:
    """The process's RSS, descriptors and threads; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        links = [_readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if "VmRSS" not in fields:  # a zombie: it has exited
        return None
    return Sample(
        t=time.monotonic() - t0,
        rss_mb=int(fields["VmRSS"].split()[0]) / 1024,
        fds=sum(link != "closed" for link in links),
        sockets=sum(link.startswith("socket:") for link in links),
        threads=int(fields["Threads"]),
    )


def make_trajectory(path: Path, frames: int = 200, seed: int = 0) -> Path:
    """16 Cu atoms (2x1x2 fcc cells) jiggling around their sites: a quiet run."""
    rng = np.random.default_rng(seed)
    a = 3.61
    cell_sites = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]) * a
    shifts = [np.array([i, 0, k]) * a for i in range(2) for k in range(2)]
    sites = np.concatenate([cell_sites + s for s in shifts])
    cell = np.diag([2 * a, a, 2 * a])
    out = [
        Frame(sites + rng.normal(scale=0.05, size=sites.shape), [29] * len(sites),
              energy=-55.0 + float(rng.normal(scale=0.01)), cell=cell, step=10 * i,
              time=10.0 * i)
        for i in range(frames)
    ]  # fmt: skip
    write_extxyz(path, out)
    return path


def _free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _trajwatch(*args: str, stdout: Any, stderr: Any) -> subprocess.Popen[str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, "-m", "trajwatch", *args],
        stdout=stdout,
        stderr=stderr,
        text=True,
        env=env,
    )


def _at_frames(samples: list[Sample], start: float, end: float, total: int, frames: int) -> int:
    """Index of the first sample taken after about ``frames`` frames had been sent."""
    rate = total / max(end - start, 1e-9)
    for index, s in enumerate(samples):
        if (s.t - start) * rate >= frames:
            return index
    return len(samples) - 1


def _last_connected(samples: list[Sample], before: float) -> Sample:
    connected = [s for s in samples if s.t < before and s.sockets]
    return connected[-1] if connected else samples[-1]


def _summary(stderr: str) -> dict[str, int]:
    line = next((x for x in stderr.splitlines() if " frames from " in x), "")
    counts = {}
    for name, pattern in [("frames", r"(\d+) frames from"), ("events", r"(\d+) events"),
                          ("malformed", r"malformed (\d+)"), ("lost", r"lost (\d+)")]:  # fmt: skip
        found = re.search(pattern, line)
        counts[name] = int(found.group(1)) if found else -1
    return counts


def run(
    quick: bool = False, *, frames: int | None = None, interval: float = 0.5
) -> dict[str, Any]:
    """Run the soak; the results as a JSON-able dict (``pass`` says if it held)."""
    total = frames or (QUICK_FRAMES if quick else FULL_FRAMES)
    baseline_frames = min(BASELINE_FRAMES, total // 4)
    with tempfile.TemporaryDirectory(prefix="trajwatch-soak-") as tmp:
        folder = Path(tmp)
        trajectory = make_trajectory(folder / "quiet.extxyz")
        endpoint = _free_endpoint()
        monitor_err = open(folder / "monitor.err", "w+")  # noqa: SIM115
        replay_err = open(folder / "replay.err", "w+")  # noqa: SIM115
        t0 = time.monotonic()
        monitor = _trajwatch(
            "monitor", "--no-tui", "--lossless", "--bind", "--endpoint", endpoint,
            "--events", str(folder / "events.jsonl"), "--idle-timeout", "2" if quick else "5",
            "--stall-timeout", "0",
            stdout=subprocess.DEVNULL, stderr=monitor_err,
        )  # fmt: skip
        replay = _trajwatch(
            "replay", str(trajectory), "--endpoint", endpoint, "--max", "--loop", "--lossless",
            "--connect", "--wait", "60", "--max-frames", str(total),
            stdout=subprocess.DEVNULL, stderr=replay_err,
        )  # fmt: skip
        monitor_samples: list[Sample] = []
        replay_samples: list[Sample] = []
        replay_end = None
        try:
            while True:
                m = sample(monitor.pid, t0)
                if m is not None:
                    monitor_samples.append(m)
                if replay_end is None:
                    r = sample(replay.pid, t0)
                    if r is not None:
                        replay_samples.append(r)
                    if replay.poll() is not None:
                        replay_end = time.monotonic() - t0
                if monitor.poll() is not None:
                    break
                if time.monotonic() - t0 > 3600:
                    raise TimeoutError("the soak did not finish within an hour")
                time.sleep(interval)
        finally:
            for proc in (replay, monitor):
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
        monitor_err.seek(0)
        replay_err.seek(0)
        monitor_text, replay_text = monitor_err.read(), replay_err.read()
        monitor_err.close()
        replay_err.close()
    counts = _summary(monitor_text)
    # sending starts when the replay found the monitor: its first sample with a socket
    start = next((s.t for s in replay_samples if s.sockets), replay_samples[0].t)
    end = replay_end if replay_end is not None else monitor_samples[-1].t
    m_base = monitor_samples[_at_frames(monitor_samples, start, end, total, baseline_frames)]
    r_base = replay_samples[_at_frames(replay_samples, start, end, total, baseline_frames)]
    # "the end": the last look while the stream was still up, i.e. before ``end`` (when
    # this loop noticed the replay had exited) and with a socket still open: afterwards
    # the processes close their sockets and exit, which would flatter the counts
    m_end = _last_connected(monitor_samples, end - interval)
    r_end = _last_connected(replay_samples, end - interval)
    rss_growth = m_end.rss_mb - m_base.rss_mb
    no_leaks = all(
        getattr(last, name) <= getattr(base, name)
        for base, last in ((m_base, m_end), (r_base, r_end))
        for name in ("fds", "sockets", "threads")
    )
    complete = counts["frames"] == total and counts["lost"] == 0 and counts["malformed"] == 0
    return {
        "benchmark": "soak",
        "quick": quick,
        "frames": total,
        "atoms": 16,
        "baseline_frames": baseline_frames,
        "seconds": end - start,
        "frames_per_second": total / max(end - start, 1e-9),
        "monitor_summary": counts,
        "monitor_line": next((x for x in monitor_text.splitlines() if " frames from " in x), ""),
        "replay_line": next((x for x in replay_text.splitlines() if "replayed" in x), ""),
        "monitor": {
            "baseline": asdict(m_base),
            "end": asdict(m_end),
            "peak_rss_mb": max(s.rss_mb for s in monitor_samples),
        },
        "replay": {
            "baseline": asdict(r_base),
            "end": asdict(r_end),
            "peak_rss_mb": max(s.rss_mb for s in replay_samples),
        },
        "rss_growth_mb": rss_growth,
        "rss_budget_mb": RSS_BUDGET_MB,
        "samples": {
            "monitor": [asdict(s) for s in monitor_samples],
            "replay": [asdict(s) for s in replay_samples],
        },
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg": list(os.getloadavg()),
            "python": sys.version.split()[0],
            "trajwatch": trajwatch.__version__,
        },
        "pass": bool(complete and rss_growth <= RSS_BUDGET_MB and no_leaks),
    }


def summary(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The suite's rows: the monitor's memory growth, leaks, and the rate it kept."""
    from trajwatch.bench import row

    base = result["monitor"]["baseline"]["rss_mb"]
    end = result["monitor"]["end"]["rss_mb"]
    frames, first = result["frames"], result["baseline_frames"]
    note = "" if frames >= FULL_FRAMES else f"quick: {frames:,} frames, not {FULL_FRAMES:,}"
    counts = result["monitor_summary"]
    missing = frames - counts["frames"] + counts["lost"] + counts["malformed"]
    kinds = ("fds", "sockets", "threads")
    growth = sum(max(0, result[p]["end"][k] - result[p]["baseline"][k])
                 for p in ("monitor", "replay") for k in kinds)  # fmt: skip
    return [
        row(f"monitor RSS after {frames:,} frames", end, unit="MB", baseline=base,
            baseline_name=f"after {first:,}", target=f"<= +{RSS_BUDGET_MB:g} MB",
            ok=result["rss_growth_mb"] <= RSS_BUDGET_MB, note=note),
        row("frames lost or unprocessed", missing, unit="frames", target="0", ok=missing == 0),
        row("fds + sockets + threads gained (both processes)", growth, target="0",
            ok=growth == 0),
        row("replay -> monitor, 16 atoms, lossless", result["frames_per_second"],
            unit="frames/s"),
    ]  # fmt: skip


def print_table(result: dict[str, Any]) -> None:
    print(
        f"soak: {result['frames']:,} frames of {result['atoms']} atoms, replay -> monitor "
        f"(lossless), {result['seconds']:.0f} s, {result['frames_per_second']:,.0f} frames/s"
    )
    print(f"  {result['replay_line']}")
    print(f"  {result['monitor_line']}")
    print()
    base = f"after {result['baseline_frames']:,}"
    print(f"{'process':<8} {'when':<14} {'RSS MB':>8} {'fds':>5} {'sockets':>8} {'threads':>8}")
    for name in ("monitor", "replay"):
        for when, key in ((base, "baseline"), ("at the end", "end")):
            s = result[name][key]
            print(
                f"{name:<8} {when:<14} {s['rss_mb']:>8.1f} {s['fds']:>5} {s['sockets']:>8} "
                f"{s['threads']:>8}"
            )
        print(f"{name:<8} {'peak':<14} {result[name]['peak_rss_mb']:>8.1f}")
    print()
    print(
        f"monitor RSS growth {result['rss_growth_mb']:+.1f} MB (budget {result['rss_budget_mb']:g}"
        f" MB); {'PASS' if result['pass'] else 'FAIL'}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_FRAMES:,} frames")
    parser.add_argument("--frames", type=int, help="frames to send (overrides --quick)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    opts = parser.parse_args(argv)
    result = run(opts.quick, frames=opts.frames)
    print_table(result)
    if opts.json:
        Path(opts.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
