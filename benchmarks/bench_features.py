"""Feature-engine benchmark: incremental vs batch, per-frame cost and scaling, end to end.

Frames come from an fcc Cu crystal whose atoms follow an Ornstein-Uhlenbeck process with
the thermal amplitude of Cu at 300 K (0.084 Å per axis, 50 fs memory, 2 fs frames), with
velocities, forces and energy, in a periodic cell. The stream plays a pool of frames
forwards then backwards, so it can run as long as needed without a jump.

* incremental vs batch: ``FeatureEngine.update`` (one frame into the window) against
  recomputing the same window (W = 50, 100 atoms) from scratch, two ways: the plain NumPy
  reference (``features.reference.features``) and a fresh engine fed the window's W + 1
  frames (the same compiled kernels, so only the incremental bookkeeping differs).
* per-frame cost at 100 / 1,000 / 10,000 atoms: CPU time of ``update`` per frame over a
  long run (neighbour-list rebuilds and RDF frames included), best of the repeats, and
  the scaling ratio cost(10,000) / cost(1,000).
* end to end, on a real trajectory: EMT MD of fcc Cu (108 and 10,000 atoms) written as
  extxyz (made once, cached in ``$TRAJWATCH_BENCH_CACHE``, default
  ``~/.cache/trajwatch-bench``). A producer process reads it with trajwatch's reader and
  sends it through a lossless ``Publisher`` (tcp) as ``trajwatch replay --max`` would,
  forwards then backwards; this process receives with a ``Subscriber`` and runs
  ``Pipeline.process`` (feature engine and the default detector stack) on one core.
  Baselines fed by the same producer in the same run: the Subscriber receiving and
  decoding only (the bare receive loop), and a raw pyzmq ``recv_multipart`` loop. Also
  the consumer's CPU per frame split into receive, features, detectors and glue.

    python benchmarks/bench_features.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zmq

try:
    import trajwatch  # noqa: F401 (checks that it imports)
except ImportError:  # running from a source checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _serving import child_env
from trajwatch.features import reference
from trajwatch.features.engine import FeatureEngine, warmup
from trajwatch.frame import Frame
from trajwatch.pipeline import Pipeline, PipelineConfig, SourceWatch
from trajwatch.pipeline import warmup as warmup_pipeline
from trajwatch.replay.xyz import iread
from trajwatch.simulate import MDSpec, run_md, write_with_ase
from trajwatch.streaming import Publisher, Subscriber

SIZES = (100, 1000, 10000)
REPEATS = {100: (3, 3, 3), 1000: (10, 5, 5), 10000: (25, 10, 10)}  # fcc cells per axis
LATTICE = 3.61  # Cu, Å
SIGMA = 0.084  # thermal amplitude per axis, Å
POOL = 64
HWM = 1000


def crystal(n_atoms: int) -> tuple[np.ndarray, np.ndarray]:
    """fcc positions (the first ``n_atoms``: 100 is 3x3x3 with 8 vacancies) and the cell."""
    reps = np.array(REPEATS[n_atoms])
    basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]) * LATTICE
    grid = np.stack(np.meshgrid(*[np.arange(r) for r in reps], indexing="ij"), -1)
    sites = (grid.reshape(-1, 1, 3) * LATTICE + basis).reshape(-1, 3)
    return sites[:n_atoms], np.diag(reps * LATTICE)


def pool(n_atoms: int, seed: int = 0) -> list[Frame]:
    """``POOL`` consecutive frames of thermal motion (Ornstein-Uhlenbeck, 2 fs apart)."""
    rng = np.random.default_rng(seed)
    sites, cell = crystal(n_atoms)
    phi = np.exp(-2.0 / 50.0)
    x = rng.normal(scale=SIGMA, size=sites.shape)
    frames = []
    for _ in range(POOL):
        new = phi * x + np.sqrt(1 - phi**2) * SIGMA * rng.normal(size=sites.shape)
        velocities = (new - x) / 2.0
        x = new
        frames.append(
            Frame(sites + x, np.full(n_atoms, 29), velocities=velocities, forces=-5.0 * x,
                  energy=-3.5 * n_atoms + 2.5 * float((x * x).sum()), cell=cell,
                  source="bench")
        )  # fmt: skip
    return frames


def stream(frames: list[Frame], count: int) -> Iterator[Frame]:
    """``count`` frames: the pool forwards, then backwards (velocities flipped), again."""
    order = list(range(len(frames))) + list(range(len(frames) - 2, 0, -1))
    for t in range(count):
        k = order[t % len(order)]
        backwards = t % len(order) >= len(frames)
        f = frames[k]
        assert f.velocities is not None
        velocities = -f.velocities if backwards else f.velocities
        yield Frame(f.positions, f.numbers, velocities=velocities,
                    forces=f.forces, energy=f.energy, cell=f.cell, step=t, time=2.0 * t,
                    source="bench", copy=False)  # fmt: skip


# -- incremental vs batch ---------------------------------------------------------------


def bench_incremental(quick: bool) -> dict[str, Any]:
    window, n = 50, 100
    frames = list(stream(pool(n), 140))
    engine = FeatureEngine(window=window)
    for f in frames[:100]:
        engine.update(f)
    probes = range(100, 140 if not quick else 110)
    best_update = min(_cpu(lambda f=f: engine.update(f)) for f in frames[100:140])
    ref_times = [_cpu(lambda t=t: reference.features(frames[: t + 1], window=window))
                 for t in probes[:3]]  # fmt: skip

    def replay(t: int) -> None:
        fresh = FeatureEngine(window=window)
        for f in frames[t - window : t + 1]:
            fresh.update(f)

    replay_times = [_cpu(lambda t=t: replay(t)) for t in probes]
    best_ref, best_replay = min(ref_times), min(replay_times)
    return {
        "atoms": n,
        "window": window,
        "update_us": best_update * 1e6,
        "numpy_batch_us": best_ref * 1e6,
        "compiled_replay_us": best_replay * 1e6,
        "ratio_vs_numpy_batch": best_ref / best_update,
        "ratio_vs_compiled_replay": best_replay / best_update,
    }


def _cpu(body: Any) -> float:
    t0 = time.thread_time()
    body()
    return time.thread_time() - t0


# -- per-frame cost ----------------------------------------------------------------------


def bench_per_frame(quick: bool) -> list[dict[str, Any]]:
    counts = {100: 3000, 1000: 800, 10000: 240}
    repeats = 2 if quick else 3
    rows = []
    for n in SIZES:
        count = counts[n] // (2 if quick else 1)
        frames = list(stream(pool(n), count + 60))
        best = float("inf")
        builds = (0, 0)
        for _ in range(repeats):
            engine = FeatureEngine()
            for f in frames[:60]:  # fill the window first
                engine.update(f)
            t0 = time.thread_time()
            for f in frames[60:]:
                engine.update(f)
            best = min(best, (time.thread_time() - t0) / count)
            builds = engine.neighbor_list_builds
        rows.append({"atoms": n, "frames": count, "us_per_frame": best * 1e6,
                     "us_per_atom": best * 1e6 / n, "contact_list_builds": builds[0],
                     "rdf_list_builds": builds[1]})  # fmt: skip
    return rows


# -- a hot run: the neighbour lists go stale as atoms move ------------------------------

HOT_RUN = MDSpec(repeat=3, temperature=2500.0, steps=3000, equilibrate_steps=500, seed=1,
                 source="bench-hot")  # fmt: skip
"""108 Cu atoms at 2,500 K (EMT, Langevin, 2 fs): at the default skin its lists would be
stale every ~16 frames; the thermal-motion stream above never makes them stale."""


def bench_hot(quick: bool) -> dict[str, Any]:
    """Per-frame cost on the hot run after its first 200 frames (CPU), the list builds and
    the skins the lists settled on; beside it the 100-atom thermal-motion stream's cost."""
    from trajwatch.features import _kernels_update as kern

    frames = list(iread(cached_run("hot-Cu-108", HOT_RUN)))[: 1200 if quick else None]
    cold = list(stream(pool(100), len(frames)))
    best = {"hot": float("inf"), "cold": float("inf")}
    for _ in range(2 if quick else 3):
        for name, run in (("hot", frames), ("cold", cold)):
            engine = FeatureEngine()
            for f in run[:200]:
                engine.update(f)
            before = engine.neighbor_list_builds
            t0 = time.thread_time()
            for f in run[200:]:
                engine.update(f)
            best[name] = min(best[name], (time.thread_time() - t0) / (len(run) - 200))
            if name == "hot":
                builds = [b - a for a, b in zip(before, engine.neighbor_list_builds, strict=True)]
                skins = (engine._fbuf[kern.F_CONTACT_SKIN], engine._fbuf[kern.F_RDF_SKIN])
    return {"atoms": frames[0].n_atoms, "frames": len(frames) - 200,
            "us_per_frame": best["hot"] * 1e6, "cold_us_per_frame": best["cold"] * 1e6,
            "contact_list_builds": builds[0], "rdf_list_builds": builds[1],
            "contact_skin": float(skins[0]), "rdf_skin": float(skins[1])}  # fmt: skip


# -- end to end ---------------------------------------------------------------------------

CACHE = Path(os.environ.get("TRAJWATCH_BENCH_CACHE", Path.home() / ".cache" / "trajwatch-bench"))
E2E_VERSION = 1
"""Part of the trajectory files' names: bump it when the runs below change."""
E2E_RUNS = {
    # nominal size -> real EMT MD of fcc Cu at 300 K (Langevin, 2 fs), as an extxyz file
    100: MDSpec(repeat=3, steps=1000, equilibrate_steps=100, seed=7, source="bench"),
    10000: MDSpec(repeat=(25, 10, 10), steps=40, equilibrate_steps=10, seed=7, source="bench"),
}
E2E_FRAMES = {100: 30_000, 10000: 1_200}
"""Frames streamed per run: the file is played forwards, then backwards with velocities
reversed (time reversal: no jump in the stream), and again."""


def trajectory_file(atoms: int) -> Path:
    """The real MD trajectory (extxyz) for a nominal size, made once and cached."""
    return cached_run(f"e2e-Cu-{atoms}", E2E_RUNS[atoms])


def cached_run(name: str, spec: MDSpec) -> Path:
    """The extxyz file of ``spec``'s EMT run, made once and kept in ``CACHE``."""
    path = CACHE / f"{name}-{spec.steps}-{spec.seed}-v{E2E_VERSION}.extxyz"
    if not path.exists():
        print(f"generating {path.name} (EMT MD, once; cached in {CACHE})", file=sys.stderr)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        write_with_ase(run_md(spec), partial)
        partial.replace(path)
    return path


def file_stream(frames: list[Frame], count: int) -> Iterator[Frame]:
    """``count`` frames of a trajectory played forwards, then backwards with velocities
    reversed, and again, with a running step and time. The same Frame objects are sent
    again and again (their arrays go out zero-copy; step and time are set per send)."""
    backwards = [
        Frame(f.positions, f.numbers, forces=f.forces, energy=f.energy, cell=f.cell,
              pbc=f.pbc, source=f.source, copy=False,
              velocities=None if f.velocities is None else -f.velocities)
        for f in frames
    ]  # fmt: skip
    order = [(k, False) for k in range(len(frames))]
    order += [(k, True) for k in range(len(frames) - 2, 0, -1)]
    for t in range(count):
        k, back = order[t % len(order)]
        frame = backwards[k] if back else frames[k]
        frame.step = t
        frame.time = 2.0 * t
        frame.wall_time = None
        yield frame


def _child(path: str, count: int) -> int:
    """The producer, as ``trajwatch replay --max`` does it: a file read by trajwatch's
    extxyz reader, sent through a lossless Publisher as fast as it takes them. The file
    is read before the clock starts (its parser has its own benchmark, bench_reader.py,
    and would otherwise be what is measured)."""
    frames = list(iread(path))
    for f in frames:
        f.source = "bench"
    with Publisher("tcp://127.0.0.1:*", topic="bench", lossless=True, hwm=HWM) as pub:
        print(pub.endpoint, flush=True)
        if not pub.wait_for_subscriber(30.0):
            return 1
        for frame in file_stream(frames, count):
            pub.send(frame)
        pub.close(linger=60.0)
    return 0


#: receive modes that run a pipeline: the default one, and the configuration issue 4's
#: end-to-end target names (all features, the z-score detector alone, no drift)
PIPELINES: dict[str, Any] = {
    "pipeline": Pipeline,
    "zscore": lambda: Pipeline(PipelineConfig(detectors=("zscore",), drift=False)),
}


def _receive(endpoint: str, count: int, mode: str) -> tuple[float, float]:
    """Frames per second between the first and the last frame, receiving with ``mode``,
    and the receiving thread's CPU time per frame (seconds)."""
    got = 0
    t_first = t_last = 0.0
    cpu_first = 0.0
    if mode == "raw":
        ctx: zmq.Context[Any] = zmq.Context()
        sock = ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, HWM)
        sock.setsockopt(zmq.RCVTIMEO, 5000)
        sock.connect(endpoint)
        try:
            while got < count:
                try:
                    sock.recv_multipart(copy=False)
                except zmq.Again:
                    break
                t_last = time.perf_counter()
                if not got:
                    t_first, cpu_first = t_last, time.thread_time()
                got += 1
        finally:
            sock.close()
            ctx.term()
    else:
        pipeline = PIPELINES[mode]() if mode in PIPELINES else None
        with Subscriber(endpoint, lossless=True, hwm=HWM) as sub:
            while got < count:
                frame = sub.recv(5.0)
                if frame is None:
                    break
                if pipeline is not None:
                    pipeline.process(frame)
                t_last = time.perf_counter()
                if not got:
                    t_first, cpu_first = t_last, time.thread_time()
                got += 1
    cpu = time.thread_time() - cpu_first
    if got < count:
        raise RuntimeError(f"{mode}: received {got} of {count} frames")
    return (got - 1) / (t_last - t_first), cpu / (got - 1)


def _one_run(path: Path, count: int, mode: str) -> tuple[float, float]:
    child = subprocess.Popen(
        [sys.executable, __file__, "--child", str(path), str(count)],
        stdout=subprocess.PIPE, env=child_env(), text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        endpoint = child.stdout.readline().strip()
        if not endpoint:
            raise RuntimeError("publisher process did not start")
        return _receive(endpoint, count, mode)
    finally:
        try:
            child.wait(timeout=300)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


def consumer_split(frames: list[Frame], count: int, repeats: int) -> dict[str, float]:
    """CPU per frame of the consumer's parts, in this process on the same frames:
    ``FeatureEngine.update``, ``DetectorStack.advance`` on the scored vectors, and
    ``Pipeline.process`` (the rest of which is the glue); best of ``repeats``."""
    stream = [
        Frame(f.positions, f.numbers, velocities=f.velocities, forces=f.forces,
              energy=f.energy, cell=f.cell, pbc=f.pbc, step=f.step, time=f.time,
              source="bench", copy=False)
        for f in file_stream(frames, count)
    ]  # fmt: skip
    best = {"features": np.inf, "detectors": np.inf, "pipeline": np.inf}
    for _ in range(repeats):
        engine = FeatureEngine()
        t0 = time.thread_time()
        vectors = [engine.update(f) for f in stream]
        best["features"] = min(best["features"], (time.thread_time() - t0) / count)
        watch = SourceWatch("bench", PipelineConfig())
        advance = getattr(watch.stack, "advance", watch.stack.update)  # (older versions)
        scored = [np.ascontiguousarray(v[watch.scored]) for v in vectors]
        t0 = time.thread_time()
        for x in scored:
            advance(x)
        best["detectors"] = min(best["detectors"], (time.thread_time() - t0) / count)
        pipeline = Pipeline()
        t0 = time.thread_time()
        for f in stream:
            pipeline.process(f)
        best["pipeline"] = min(best["pipeline"], (time.thread_time() - t0) / count)
    us = {k: v * 1e6 for k, v in best.items()}
    us["glue"] = us["pipeline"] - us["features"] - us["detectors"]
    return us


def reader_rate(path: Path) -> float:
    """Frames/s of trajwatch's extxyz reader on the file (what bounds a streaming
    ``trajwatch replay``), CPU time."""
    t0 = time.thread_time()
    n = sum(1 for _ in iread(path))
    return n / (time.thread_time() - t0)


def bench_end_to_end(quick: bool) -> list[dict[str, Any]]:
    repeats = 2 if quick else 3
    rows = []
    for nominal in E2E_RUNS:
        path = trajectory_file(nominal)
        frames = list(iread(path))
        count = E2E_FRAMES[nominal] // (3 if quick else 1)
        runs: dict[str, list[float]] = {"pipeline": [], "subscriber": [], "raw": []}
        cpus: dict[str, list[float]] = {mode: [] for mode in runs}
        for _ in range(repeats):  # interleaved, best of: the machine is shared
            for mode in runs:
                fps, cpu = _one_run(path, count, mode)
                runs[mode].append(fps)
                cpus[mode].append(cpu)
        best = {mode: max(values) for mode, values in runs.items()}
        cpu_us = {mode: min(values) * 1e6 for mode, values in cpus.items()}
        split = consumer_split(frames, min(count, 6000), repeats)
        rows.append({
            "atoms": frames[0].n_atoms,
            "nominal_atoms": nominal,
            "file": path.name,
            "file_frames": len(frames),
            "frames": count,
            "reader_fps": reader_rate(path),
            "pipeline_fps": best["pipeline"],
            "subscriber_fps": best["subscriber"],
            "raw_fps": best["raw"],
            "ratio_vs_subscriber": best["pipeline"] / best["subscriber"],
            "ratio_vs_raw": best["pipeline"] / best["raw"],
            "pipeline_cpu_us": cpu_us["pipeline"],
            "subscriber_cpu_us": cpu_us["subscriber"],
            "raw_cpu_us": cpu_us["raw"],
            "pipeline_capacity_fps": 1e6 / cpu_us["pipeline"],
            "capacity_ratio_vs_subscriber": cpu_us["subscriber"] / cpu_us["pipeline"],
            "split_us": {"receive": cpu_us["subscriber"], **split},
            "runs": runs,
            "cpu_runs_us": {mode: [c * 1e6 for c in v] for mode, v in cpus.items()},
        })  # fmt: skip
    return rows


# -- the benchmark ----------------------------------------------------------------------


def run(quick: bool = False, *, end_to_end: bool = False) -> dict[str, Any]:
    """Run the benchmark; the results as a JSON-able dict.

    The end-to-end section (``end_to_end=True``, ``--end-to-end``) is off by default:
    ``bench_e2e.py`` owns those figures in the suite, so they are measured once.
    """
    t0 = time.perf_counter()
    compile_seconds = warmup()
    if end_to_end:
        warmup_pipeline()
    incremental = bench_incremental(quick)
    per_frame = bench_per_frame(quick)
    hot = bench_hot(quick)
    e2e_rows = bench_end_to_end(quick) if end_to_end else []
    cost = {r["atoms"]: r["us_per_frame"] for r in per_frame}
    e2e = {r["nominal_atoms"]: r for r in e2e_rows}
    scaling = cost[10000] / cost[1000]
    checks = {
        "incremental_vs_batch_min_50x": incremental["ratio_vs_numpy_batch"] >= 50,
        "incremental_vs_compiled_replay_min_50x": incremental["ratio_vs_compiled_replay"] >= 50,
        "scaling_10000_over_1000_max_12": scaling <= 12,
    }
    if e2e:
        checks["e2e_100_atoms_min_20000fps"] = e2e[100]["pipeline_fps"] >= 20_000
        checks["e2e_100_atoms_min_0.6x_bare"] = e2e[100]["ratio_vs_subscriber"] >= 0.6
        checks["e2e_10000_atoms_min_1000fps"] = e2e[10000]["pipeline_fps"] >= 1_000
    return {
        "benchmark": "features",
        "quick": quick,
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg": list(os.getloadavg()),
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "pyzmq": zmq.__version__,
        },
        "warmup_seconds": compile_seconds,
        "incremental": incremental,
        "per_frame": per_frame,
        "hot": hot,
        "scaling_10000_over_1000": scaling,
        "end_to_end": e2e_rows,
        "checks": checks,
        "pass": all(checks.values()),
        "seconds": time.perf_counter() - t0,
    }


def summary(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The suite's rows: incremental update against batch recompute, per-frame cost."""
    from trajwatch.bench import row

    inc = result["incremental"]
    w, n = inc["window"], inc["atoms"]
    rows = [
        row(f"window update, W={w}, {n} atoms (CPU)", inc["update_us"], unit="us",
            baseline=inc["numpy_batch_us"], baseline_name="NumPy batch",
            target=">= 50x faster", ok=inc["ratio_vs_numpy_batch"] >= 50),
        row(f"window update, W={w}, {n} atoms (CPU)", inc["update_us"], unit="us",
            baseline=inc["compiled_replay_us"], baseline_name="compiled batch",
            target=">= 50x faster", ok=inc["ratio_vs_compiled_replay"] >= 50),
    ]  # fmt: skip
    rows += [row(f"features per frame, {r['atoms']} atoms (CPU)", r["us_per_frame"], unit="us")
             for r in result["per_frame"]]  # fmt: skip
    hot = result.get("hot")
    if hot:
        rows.append(row(f"features per frame, {hot['atoms']}-atom Cu at 2500 K (CPU)",
                        hot["us_per_frame"], unit="us", baseline=hot["cold_us_per_frame"],
                        baseline_name="100-atom crystal",
                        note=f"lists rebuilt {hot['contact_list_builds']}+"
                        f"{hot['rdf_list_builds']} times in {hot['frames']:,} frames, "
                        f"skins {hot['contact_skin']:.2f}/{hot['rdf_skin']:.2f} Å"))  # fmt: skip
    scaling = result["scaling_10000_over_1000"]
    rows.append(row("cost(10,000 atoms) / cost(1,000)", scaling, target="<= 12 (O(N))",
                    ok=scaling <= 12))  # fmt: skip
    return rows


def print_end_to_end(rows: list[dict[str, Any]]) -> None:
    """The end-to-end table (also printed by ``bench_e2e.py``)."""
    print("end to end, publisher process -> tcp -> Subscriber -> Pipeline (best of repeats)")
    print("wall clock: frames/s received; ratios to the Subscriber-only and raw pyzmq loops")
    print(f"{'atoms':>6} {'pipeline f/s':>13} {'subscriber f/s':>15} {'raw f/s':>9} "
          f"{'vs sub':>7} {'vs raw':>7}")  # fmt: skip
    for r in rows:
        print(f"{r['atoms']:>6} {r['pipeline_fps']:>13,.0f} {r['subscriber_fps']:>15,.0f} "
              f"{r['raw_fps']:>9,.0f} {r['ratio_vs_subscriber']:>7.2f} "
              f"{r['ratio_vs_raw']:>7.2f}")  # fmt: skip
    if "zscore_fps" in rows[0]:
        print("features + z-score alone (issue 4's configuration), frames/s and vs sub:")
        for r in rows:
            print(f"{r['atoms']:>6} {r['zscore_fps']:>13,.0f} "
                  f"{r['zscore_ratio_vs_subscriber']:>7.2f}")  # fmt: skip
    print("receiving thread's CPU per frame (us) and what one core could sustain")
    print(f"{'atoms':>6} {'pipeline':>9} {'subscriber':>11} {'raw':>6} {'capacity f/s':>13} "
          f"{'vs sub':>7}")  # fmt: skip
    for r in rows:
        print(f"{r['atoms']:>6} {r['pipeline_cpu_us']:>9.1f} {r['subscriber_cpu_us']:>11.1f} "
              f"{r['raw_cpu_us']:>6.1f} {r['pipeline_capacity_fps']:>13,.0f} "
              f"{r['capacity_ratio_vs_subscriber']:>7.2f}")  # fmt: skip
    if "split_us" not in rows[0]:
        return
    print("consumer CPU split (us per frame): receive + decode (Subscriber loop), then in")
    print("this process on the same frames: features, detectors, glue (Pipeline.process - both)")
    print(f"{'atoms':>6} {'receive':>8} {'features':>9} {'detectors':>10} {'glue':>6} {'sum':>7}")
    for r in rows:
        sp = r["split_us"]
        total = sp["receive"] + sp["pipeline"]
        print(f"{r['atoms']:>6} {sp['receive']:>8.1f} {sp['features']:>9.1f} "
              f"{sp['detectors']:>10.1f} {sp['glue']:>6.1f} {total:>7.1f}")  # fmt: skip


def print_table(result: dict[str, Any]) -> None:
    print(f"feature benchmark ({'quick' if result['quick'] else 'full'}); "
          f"load average {result['machine']['loadavg'][0]:.2f} on {result['machine']['cpus']} "
          f"cpus; warmup {result['warmup_seconds']:.2f} s")  # fmt: skip
    inc = result["incremental"]
    print()
    print(f"incremental vs batch, W={inc['window']}, {inc['atoms']} atoms (CPU time)")
    print(f"  update            {inc['update_us']:>12,.1f} us")
    print(f"  NumPy batch       {inc['numpy_batch_us']:>12,.1f} us   "
          f"ratio {inc['ratio_vs_numpy_batch']:>9,.0f}x")  # fmt: skip
    print(f"  compiled replay   {inc['compiled_replay_us']:>12,.1f} us   "
          f"ratio {inc['ratio_vs_compiled_replay']:>9,.1f}x")  # fmt: skip
    print()
    print("per-frame cost (CPU time, rebuilds and RDF frames included)")
    print(f"{'atoms':>6} {'us/frame':>9} {'ns/atom':>8} {'list builds':>12}")
    for r in result["per_frame"]:
        builds = f"{r['contact_list_builds']}+{r['rdf_list_builds']}"
        print(f"{r['atoms']:>6} {r['us_per_frame']:>9.1f} {r['us_per_atom'] * 1e3:>8.1f} "
              f"{builds:>12}")  # fmt: skip
    print(f"  scaling cost(10000) / cost(1000) = {result['scaling_10000_over_1000']:.2f}")
    hot = result["hot"]
    print(f"  {hot['atoms']}-atom Cu at 2500 K: {hot['us_per_frame']:.1f} us/frame "
          f"(100-atom crystal {hot['cold_us_per_frame']:.1f}); lists built "
          f"{hot['contact_list_builds']}+{hot['rdf_list_builds']} times in {hot['frames']} "
          f"frames; skins {hot['contact_skin']:.2f} / {hot['rdf_skin']:.2f} Å")  # fmt: skip
    print()
    if result["end_to_end"]:
        print_end_to_end(result["end_to_end"])
        print()
    for name, ok in result["checks"].items():
        print(f"  {'pass' if ok else 'FAIL'}  {name}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return _child(argv[1], int(argv[2]))
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames, fewer repeats")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--end-to-end",
        action="store_true",
        help="also the end-to-end section (bench_e2e.py has it in the suite)",
    )
    args = parser.parse_args(argv)
    result = run(quick=args.quick, end_to_end=args.end_to_end)
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
