"""Scaling benchmark: ``trajwatch scan`` of an archive serially, on a process pool and on Dask,
and frames through the fan-in proxy against a direct connection.

Archive: real EMT molecular dynamics (ASE, Langevin, Cu, a clash in every other file)
written to a temporary directory, then scanned by the real command (``trajwatch.cli.main``)
in three modes, taking turns so that a busy machine slows each alike:

* serial: ``scan --jobs 1`` (one file after the other, in this process);
* pool: ``scan --jobs N`` (N = the CPUs this process may use), process start-up included;
* Dask: ``scan --dask ADDRESS`` on a LocalCluster of N single-threaded worker processes on
  127.0.0.1, started beforehand (a cluster outlives a scan; its start-up is reported
  apart).

Each mode's event log must be byte-identical to the serial one (checked). Figures are files/s
and frames/s by wall clock, best of the rounds, with ratios to the serial run.

Proxy: one publisher process sends 108-atom frames (positions, numbers, velocities,
forces) as fast as it can, once straight to a Subscriber and once through ``trajwatch
proxy`` (a process of its own); frames/s received and decoded by the subscriber, and frames
lost (sequence gaps), best of the rounds.

Usage::

    PYTHONPATH=src python benchmarks/bench_scale.py [--quick] [--json results.json]

``run(quick)`` returns the same numbers as a dict (for ``trajwatch bench``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from trajwatch.cli import main as trajwatch  # noqa: E402
from trajwatch.parallel import default_jobs  # noqa: E402

PROXY_ATOMS = 108


# -- the archive ---------------------------------------------------------------------


def make_archive(where: Path, files: int, frames: int, base: int) -> list[Path]:
    """``files`` trajectories of ``frames`` frames each, from two real EMT MD runs of
    ``base`` frames (108 Cu atoms; one clean, one with a clash at 60 %): each file plays
    its run forward and backward (velocities reversed), from an offset of its own, so
    the positions stay continuous however long the file is."""
    from trajwatch.frame import Frame
    from trajwatch.replay.xyz import write_extxyz
    from trajwatch.simulate import MDSpec, run_md

    runs = [
        list(run_md(MDSpec(steps=base, seed=1))),
        list(run_md(MDSpec(steps=base, seed=2, fault="clash", fault_frame=base * 3 // 5))),
    ]
    paths = []
    for i in range(files):
        run = runs[i % 2]
        period = 2 * len(run) - 2
        out = []
        for k in range(frames):
            phase = (k + 7 * i) % period
            backward = phase >= len(run)
            f = run[period - phase if backward else phase]
            v = None if f.velocities is None else (-f.velocities if backward else f.velocities)
            out.append(
                Frame(f.positions, f.numbers, velocities=v, forces=f.forces, energy=f.energy,
                      cell=f.cell, pbc=f.pbc, step=k, time=2.0 * k)
            )  # fmt: skip
        path = where / f"md{i:03d}.extxyz"
        write_extxyz(path, out)
        paths.append(path)
    return paths


def tree_cpu_seconds() -> float:
    """CPU seconds of this process and all its descendants, living or reaped: a living
    process counts by its own times, a reaped one in its parent's children times."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for process in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # one that ended meanwhile: its parent has it
            t = process.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def scan_seconds(files: list[Path], out: Path, *mode: str) -> tuple[float, float]:
    """Wall-clock and CPU seconds (all processes involved) of one ``trajwatch scan``."""
    cpu = tree_cpu_seconds()
    start = time.perf_counter()
    code = trajwatch(["scan", *map(str, files), "--quiet", "--events", str(out), *mode])
    seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"scan {' '.join(mode)} failed with status {code}")
    return seconds, tree_cpu_seconds() - cpu


def bench_archive(quick: bool) -> dict[str, Any]:
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")  # the workers' too
    from distributed import LocalCluster

    logging.getLogger("distributed").setLevel(logging.ERROR)
    jobs = default_jobs()
    n_files, frames, base = (8, 1500, 150) if quick else (16, 4000, 300)
    rounds = 1 if quick else 3
    with tempfile.TemporaryDirectory(prefix="trajwatch-bench-scale-") as tmp:
        where = Path(tmp)
        files = make_archive(where, n_files, frames, base)
        atoms = 108
        start = time.perf_counter()
        with LocalCluster(
            n_workers=jobs,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster:
            cluster_seconds = time.perf_counter() - start
            modes = {
                "serial": ("--jobs", "1"),
                "pool": ("--jobs", str(jobs)),
                "dask": ("--dask", cluster.scheduler_address),
            }
            best = dict.fromkeys(modes, (float("inf"), 0.0))
            logs: dict[str, bytes] = {}
            for _ in range(rounds):
                for name, mode in modes.items():
                    out = where / f"{name}.jsonl"
                    best[name] = min(best[name], scan_seconds(files, out, *mode))
                    logs[name] = out.read_bytes()
    identical = all(log == logs["serial"] for log in logs.values())
    if not identical:
        raise RuntimeError("a parallel scan wrote other events than the serial one")
    rows = {}
    for name, (seconds, cpu) in best.items():
        rows[name] = {
            "seconds": seconds,
            "files_per_s": n_files / seconds,
            "frames_per_s": n_files * frames / seconds,
            "vs_serial": best["serial"][0] / seconds,
            "cpu_seconds": cpu,
            "cores_used": cpu / seconds,
        }
    return {
        "files": n_files,
        "frames_per_file": frames,
        "atoms": atoms,
        "jobs": jobs,
        "rounds": rounds,
        "events_identical": identical,
        "events": logs["serial"].count(b"\n"),
        "dask_cluster_start_s": cluster_seconds,
        "modes": rows,
    }


def _spin(seconds: float) -> float:
    end = time.perf_counter() + seconds
    start = time.process_time()
    while time.perf_counter() < end:
        pass
    return time.process_time() - start


def free_cores(jobs: int, seconds: float = 2.0) -> float:
    """How many cores ``jobs`` busy processes get right now (the machine is shared)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        return sum(pool.map(_spin, [seconds] * jobs)) / seconds


# -- the proxy -----------------------------------------------------------------------


def _child(endpoint: str, count: int) -> int:
    """Publish ``count`` frames to ``endpoint`` (connecting), after a subscriber joined."""
    import numpy as np

    from trajwatch.frame import Frame
    from trajwatch.streaming import Publisher

    rng = np.random.default_rng(0)
    n = PROXY_ATOMS
    frames = [
        Frame(
            rng.uniform(0, 15, (n, 3)),
            np.full(n, 29),
            velocities=rng.normal(size=(n, 3)),
            forces=rng.normal(size=(n, 3)),
            energy=-3.0 * n,
            cell=np.eye(3) * 15.0,
            step=i,
            time=2.0 * i,
        )
        for i in range(8)
    ]
    # unbounded queues (here, in the proxy, in the subscriber): nothing is dropped, so the
    # rate is what the slowest stage delivers
    with Publisher(endpoint, bind=False, topic="bench", hwm=0) as publisher:
        if not publisher.wait_for_subscriber(timeout=60):
            return 1
        for i in range(count):
            publisher.send(frames[i % 8])
        publisher.close(linger=10)
    return 0


def _receive(subscriber: Any, count: int, child: subprocess.Popen[bytes]) -> dict[str, float]:
    first = last = 0.0
    received = 0
    while received < count:
        frame = subscriber.recv(timeout=2.0)
        if frame is None:
            if child.poll() is not None:
                break  # the publisher is done: the rest was lost
            continue
        last = time.perf_counter()
        if not received:
            first = last
        received += 1
    rate = (received - 1) / (last - first) if received > 1 and last > first else 0.0
    return {"frames_per_s": rate, "received": received, "lost": subscriber.stats.lost}


def _publisher(endpoint: str, count: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, __file__, "--child", endpoint, str(count)],
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )


def bench_proxy(quick: bool) -> dict[str, Any]:
    from trajwatch.streaming import Subscriber

    count = 5_000 if quick else 20_000
    rounds = 2 if quick else 3
    best: dict[str, dict[str, float]] = {}
    for _ in range(rounds):
        # direct: the subscriber binds, the publisher connects (the fan-in layout)
        with Subscriber("tcp://127.0.0.1:*", bind=True, topics=("bench",), hwm=0) as sub:
            child = _publisher(sub.endpoint, count)
            try:
                direct = _receive(sub, count, child)
            finally:
                child.wait(timeout=60)
        proxy = subprocess.Popen(
            [sys.executable, "-m", "trajwatch", "proxy", "--frontend", "tcp://127.0.0.1:*",
             "--backend", "tcp://127.0.0.1:*", "--hwm", "0"],
            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(SRC)},
        )  # fmt: skip
        try:
            assert proxy.stderr is not None
            found = re.search(r"connect to (\S+), monitors to (\S+)", proxy.stderr.readline())
            assert found, "the proxy did not start"
            frontend, backend = found.groups()
            with Subscriber(backend, topics=("bench",), hwm=0) as sub:
                child = _publisher(frontend, count)
                try:
                    through = _receive(sub, count, child)
                finally:
                    child.wait(timeout=60)
        finally:
            proxy.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proxy.communicate(timeout=10)
            proxy.kill()
        for name, row in (("direct", direct), ("proxy", through)):
            if name not in best or row["frames_per_s"] > best[name]["frames_per_s"]:
                best[name] = row
    frame_bytes = 136 + PROXY_ATOMS * (4 + 3 * 8 * 3)
    for row in best.values():
        row["mb_per_s"] = row["frames_per_s"] * frame_bytes / 1e6
    best["proxy"]["vs_direct"] = best["proxy"]["frames_per_s"] / best["direct"]["frames_per_s"]
    return {"frames": count, "atoms": PROXY_ATOMS, "rounds": rounds, **best}


# -- the run ---------------------------------------------------------------------------


def _environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "usable_cpus": default_jobs(),
        "load_average": list(os.getloadavg()),
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Run the benchmark; files/s per scan mode, ratios to serial, proxy frames/s."""
    results: dict[str, Any] = {"quick": quick, "environment": _environment()}
    jobs = default_jobs()
    free = [free_cores(jobs)]
    results["archive"] = bench_archive(quick)
    free.append(free_cores(jobs))
    results["environment"]["free_cores_before_after"] = free
    results["proxy"] = bench_proxy(quick)
    results["environment"]["load_average_after"] = list(os.getloadavg())
    return results


def summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The suite's rows: files/s of each scan mode beside serial, the proxy beside direct."""
    from trajwatch.bench import row

    archive = results["archive"]
    serial = archive["modes"]["serial"]["files_per_s"]
    rows = [
        row(f"scan files/s, {name}" + ("" if name == "serial" else f", {archive['jobs']} workers"),
            mode["files_per_s"],
            unit="files/s", baseline=serial, baseline_name="serial scan",
            ok=archive["events_identical"] if name != "serial" else None,
            target="events identical to serial" if name != "serial" else "",
            note=f"{mode['cores_used']:.2f} cores used")
        for name, mode in archive["modes"].items()
    ]  # fmt: skip
    proxy = results["proxy"]
    rows.append(row("frames/s through trajwatch proxy", proxy["proxy"]["frames_per_s"],
                    unit="frames/s", baseline=proxy["direct"]["frames_per_s"],
                    baseline_name="direct PUB/SUB", target="nothing lost",
                    ok=proxy["proxy"]["lost"] == 0))  # fmt: skip
    return rows


def format_table(results: dict[str, Any]) -> str:
    archive = results["archive"]
    lines = [
        f"trajwatch scan of {archive['files']} files x {archive['frames_per_file']} frames "
        f"({archive['atoms']} atoms, EMT MD), {archive['jobs']} workers; wall clock, best of "
        f"{archive['rounds']}",
        "",
        f"{'mode':<8} {'seconds':>8} {'files/s':>8} {'frames/s':>9} {'vs serial':>10} "
        f"{'CPU s':>7} {'cores used':>11}",
    ]
    for name, row in archive["modes"].items():
        lines.append(
            f"{name:<8} {row['seconds']:>8.2f} {row['files_per_s']:>8.2f} "
            f"{row['frames_per_s']:>9.0f} {row['vs_serial']:>9.2f}x "
            f"{row['cpu_seconds']:>7.1f} {row['cores_used']:>11.2f}"
        )
    lines += [
        f"events identical to the serial scan: {archive['events_identical']} "
        f"({archive['events']} events); Dask LocalCluster start-up "
        f"{archive['dask_cluster_start_s']:.1f} s (not in its time)",
        "",
    ]
    proxy = results["proxy"]
    lines += [
        f"{proxy['frames']:,} frames of {proxy['atoms']} atoms (positions, velocities, forces), "
        "one publisher -> one subscriber, best of "
        f"{proxy['rounds']}",
        f"{'path':<8} {'frames/s':>9} {'MB/s':>7} {'lost':>6}",
    ]
    for name in ("direct", "proxy"):
        row = proxy[name]
        lines.append(
            f"{name:<8} {row['frames_per_s']:>9.0f} {row['mb_per_s']:>7.1f} {row['lost']:>6.0f}"
        )
    lines += [
        f"through the proxy: {proxy['proxy']['vs_direct']:.2f}x the direct rate",
        "",
        f"load average before/after: {results['environment']['load_average']} / "
        f"{results['environment']['load_average_after']}",
        "cores that {} busy processes got before/after the scans: {:.2f} / {:.2f}".format(
            archive["jobs"], *results["environment"]["free_cores_before_after"]
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child(argv[1], int(argv[2]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer files, frames and rounds")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    args = parser.parse_args(argv)
    results = run(quick=args.quick)
    print(format_table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
