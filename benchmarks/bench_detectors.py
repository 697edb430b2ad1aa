"""Per-frame cost of each detector and of the whole default stack, against the feature engine.

Every figure is measured in the same run: each Numba detector (score + learn of one frame)
on 30 standardised features, the default :class:`~trajwatch.detectors.stack.DetectorStack`
(detectors, calibration, fusion, hysteresis, onset, drift) on 30 features and on the
feature engine's own vector, and the feature engine itself on a 108-atom Cu frame. Also
the worst single ``learn_one`` of the windowed detectors (their window swaps) next to
River's ``HalfSpaceTrees`` at its default size, to show there is no stall.

Times are CPU time of the benchmarking thread (``time.thread_time``), so other processes
on a shared machine do not inflate them; "empty Numba call" is the cost of calling a
kernel that does nothing, the floor under every figure.

Run ``python benchmarks/bench_detectors.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from trajwatch.detectors.hst import HalfSpaceTrees
from trajwatch.detectors.loda import LODA
from trajwatch.detectors.robust_zscore import RobustZScore
from trajwatch.detectors.stack import DetectorStack, StackConfig
from trajwatch.detectors.stack import warmup as warmup_detectors
from trajwatch.detectors.zscore import ZScore

D = 30
TARGET_DETECTOR_US = 5.0
TARGET_STACK_US = 20.0

NUMBA_DETECTORS: dict[str, Callable[[], Any]] = {
    "zscore": ZScore,
    "robust": RobustZScore,
    "hst": HalfSpaceTrees,
    "loda": LODA,
}


def _per_frame(fn: Callable[[np.ndarray], object], xs: np.ndarray, repeats: int) -> float:
    """Best of ``repeats`` passes over ``xs``: microseconds per call."""
    best = np.inf
    for _ in range(repeats):
        start = time.thread_time()
        for x in xs:
            fn(x)
        best = min(best, (time.thread_time() - start) / len(xs))
    return best * 1e6


def _trained(factory: Callable[[], Any], xs: np.ndarray) -> Any:
    det = factory()
    for x in xs:
        det.learn_one(x)
    return det


def bench_detectors(n: int, repeats: int) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(600, D))
    xs = rng.normal(size=(n, D))
    out = {}
    for name, factory in NUMBA_DETECTORS.items():
        det = _trained(factory, train)
        score = _per_frame(det.score_one, xs, repeats)
        learn = _per_frame(det.learn_one, xs, repeats)
        # What the stack calls: unchecked score, then learn reusing the score's z.
        fast_learn = getattr(det, "_learn_scored", det._learn)

        def step(x: np.ndarray, det: Any = det, fast_learn: Any = fast_learn) -> None:
            det._score(x)
            fast_learn(x)

        in_stack = _per_frame(step, xs, repeats)
        out[name] = {
            "score_us": score,
            "learn_us": learn,
            "total_us": score + learn,
            "in_stack_us": in_stack,
        }
    return out


def bench_dispatch(n: int, repeats: int) -> float:
    """An empty Numba call with one array argument: the floor every kernel call pays
    (it shows how loaded the machine is)."""
    from numba import njit

    @njit(cache=False)
    def nothing(a: np.ndarray) -> float:
        return 0.0

    xs = np.zeros((n, D))
    nothing(xs[0])
    return _per_frame(nothing, xs, repeats)


def bench_stall(n: int) -> dict[str, dict[str, float]]:
    """Median single learn_one, and the median and worst over the frames that swap
    windows (wall clock: a stall is what a user waits for)."""
    rng = np.random.default_rng(1)
    xs = rng.normal(size=(n, D))
    out = {}
    for name in ("hst", "loda"):
        det = _trained(NUMBA_DETECTORS[name], xs[:50])
        times, swaps = [], []
        for x in xs:
            before = int(det.state[3])
            start = time.perf_counter()
            det.learn_one(x)
            elapsed = time.perf_counter() - start
            (swaps if det.state[3] != before else times).append(elapsed)
        out[name] = _stall_row(times, swaps)
    from river import anomaly

    model = anomaly.HalfSpaceTrees(seed=0)  # River's defaults: 10 trees, height 8, window 250
    keys = [f"x{k}" for k in range(D)]
    times, swaps = [], []
    for i, x in enumerate(rng.uniform(size=(min(n, 1000), D))):
        d = dict(zip(keys, x, strict=True))
        start = time.perf_counter()
        model.learn_one(d)
        elapsed = time.perf_counter() - start
        (swaps if i == 0 or (i + 1) % model.window_size == 0 else times).append(elapsed)
    out["river-hst"] = _stall_row(times, swaps)
    return out


def _stall_row(times: list[float], swaps: list[float]) -> dict[str, float]:
    t, s = np.array(times) * 1e6, np.array(swaps) * 1e6
    return {
        "median_us": float(np.median(t)),
        "swap_median_us": float(np.median(s)) if s.size else float("nan"),
        "swap_max_us": float(s.max()) if s.size else float("nan"),
        "swaps": int(s.size),
    }


def bench_stack(
    d: int, n: int, repeats: int, config: StackConfig | None = None, method: str = "advance"
) -> float:
    """The stack per frame: ``advance`` (what the pipeline calls) or ``update`` (the same
    plus a Step object for the caller)."""
    rng = np.random.default_rng(2)
    best = np.inf
    for _ in range(repeats):
        stack = DetectorStack(config or StackConfig(), n_features=d)
        for x in rng.normal(size=(600, d)):  # past warm-up, calibration and first windows
            stack.update(x)
        xs = rng.normal(size=(n, d))
        step = getattr(stack, method)
        start = time.thread_time()
        for x in xs:
            step(x)
        best = min(best, (time.thread_time() - start) / n)
    return best * 1e6


def bench_engine(n: int, repeats: int) -> tuple[float, int]:
    from trajwatch.features.engine import FeatureEngine
    from trajwatch.features.engine import warmup as warmup_features
    from trajwatch.simulate import MDSpec, run_md

    warmup_features()
    frames = list(run_md(MDSpec(steps=n + 60, repeat=3, equilibrate_steps=20)))
    best = np.inf
    names = 0
    for _ in range(repeats):
        engine = FeatureEngine()
        names = len(engine.names)
        for f in frames[:60]:
            engine.update(f)
        start = time.thread_time()
        for f in frames[60:]:
            engine.update(f)
        best = min(best, (time.thread_time() - start) / n)
    return best * 1e6, names


def run(quick: bool) -> dict[str, Any]:
    warmup_detectors()
    n = 2000 if quick else 20000
    repeats = 3 if quick else 5
    dispatch = bench_dispatch(n, repeats)
    detectors = bench_detectors(n, repeats)
    stall = bench_stall(1200 if quick else 5000)
    engine_us, n_features = bench_engine(100 if quick else 300, 2 if quick else 3)
    stack_30 = bench_stack(D, n, repeats)
    stack_engine = bench_stack(n_features, n, repeats)
    stack_update = bench_stack(n_features, n, repeats, method="update")
    plain = DetectorStack.fused
    DetectorStack.fused = False  # the general path: one kernel call per detector and step
    try:
        stack_general = bench_stack(n_features, n, repeats)
    finally:
        DetectorStack.fused = plain
    return {
        "benchmark": "detectors",
        "quick": quick,
        "features": D,
        "detectors": detectors,
        "stall": stall,
        "stack_us": {str(D): stack_30, str(n_features): stack_engine},
        "stack_update_us": stack_update,
        "stack_general_us": stack_general,
        "engine_us": engine_us,
        "dispatch_us": dispatch,
        "engine_features": n_features,
        "engine_atoms": 108,
        "targets": {"detector_us": TARGET_DETECTOR_US, "stack_us": TARGET_STACK_US},
    }


def summary(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The suite's rows: each detector and the stack against the targets, the window
    swaps against River's HalfSpaceTrees."""
    from trajwatch.bench import row

    limit, engine = r["targets"]["detector_us"], r["engine_us"]
    rows = [row(f"{name} score+learn, {r['features']} features (CPU)", d["in_stack_us"],
                unit="us", baseline=engine, baseline_name="feature engine",
                target=f"<= {limit:g} us", ok=d["in_stack_us"] <= limit)
            for name, d in r["detectors"].items()]  # fmt: skip
    stack_limit = r["targets"]["stack_us"]
    rows += [row(f"default stack, {d} features (CPU)", us, unit="us", baseline=engine,
                 baseline_name="feature engine", target=f"<= {stack_limit:g} us",
                 ok=us <= stack_limit) for d, us in r["stack_us"].items()]  # fmt: skip
    river = r["stall"]["river-hst"]
    hst = r["stall"]["hst"]
    rows.append(row("hst learn_one, median (wall)", hst["median_us"], unit="us",
                    baseline=river["median_us"], baseline_name="River HST"))  # fmt: skip
    for name in ("hst", "loda"):
        s = r["stall"][name]
        rows.append(row(f"{name} learn_one, worst window swap (wall)", s["swap_max_us"],
                        unit="us", baseline=river["swap_max_us"],
                        baseline_name="River HST"))  # fmt: skip
    return rows


def table(r: dict[str, Any]) -> str:
    engine = r["engine_us"]
    lines = [
        f"µs per frame, {r['features']} features"
        f"{'':>7}{'score':>8}{'learn':>8}{'total':>8}{'in stack':>9}  target  vs engine",
    ]
    for name, d in r["detectors"].items():
        ok = "ok" if d["in_stack_us"] <= r["targets"]["detector_us"] else "SLOW"
        lines.append(
            f"  {name:<32}{d['score_us']:>8.2f}{d['learn_us']:>8.2f}{d['total_us']:>8.2f}"
            f"{d['in_stack_us']:>9.2f}  {ok:<6}  {d['in_stack_us'] / engine:>7.3f}x"
        )
    for d, us in r["stack_us"].items():
        ok = "ok" if us <= r["targets"]["stack_us"] else "SLOW"
        label = f"default stack, {d} features"
        lines.append(f"  {label:<32}{'':>24}{us:>9.2f}  {ok:<6}  {us / engine:>7.3f}x")
    n = r["engine_features"]
    for label, us in (
        (f"  with .update() (a Step), {n} f.", r["stack_update_us"]),
        (f"  general path (unfused), {n} f.", r["stack_general_us"]),
    ):
        lines.append(f"  {label:<32}{'':>24}{us:>9.2f}          {us / engine:>7.3f}x")
    n_features, atoms = r["engine_features"], r["engine_atoms"]
    label = f"feature engine ({n_features} feat., {atoms} atoms)"
    lines.append(f"  {label:<32}{'':>24}{engine:>9.2f}          1.000x")
    lines.append(
        f"  {'empty Numba call (load floor)':<32}{'':>24}{r['dispatch_us']:>9.2f}"
        f"          {r['dispatch_us'] / engine:>6.3f}x"
    )
    lines.append("")
    lines.append(
        f"{'single learn_one, wall µs':<28}{'median':>9}{'at swaps':>10}{'worst swap':>12}"
    )
    for name, s in r["stall"].items():
        lines.append(
            f"  {name:<26}{s['median_us']:>9.2f}{s['swap_median_us']:>10.1f}"
            f"{s['swap_max_us']:>12.1f}   ({s['swaps']} swaps)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames and repeats")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results here")
    args = parser.parse_args(argv)
    result = run(args.quick)
    print(table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
