"""Detection quality on a labelled fault suite made from real ASE EMT molecular dynamics.

Every fault is made by changing the running simulation (see :mod:`trajwatch.simulate`):
timestep blow-up, thermostat runaway, slow heating to melting, an atom pushed into a
neighbour, a huge velocity kick, the potential swapped for a wrong one, frozen frames,
NaN frames and a slowly degrading force field, on several metals and temperatures, plus
clean runs. Trajectories are generated once and cached as ``.npz`` under
``$TRAJWATCH_BENCH_CACHE`` (default ``~/.cache/trajwatch-bench``), keyed by the run's
``MDSpec`` and :data:`SUITE_VERSION`.

Three systems see the same feature vectors (the pipeline's feature engine, per run):

* ``trajwatch``: the default :class:`~trajwatch.pipeline.Pipeline` (self-baseline);
* ``river-hst``: River's ``HalfSpaceTrees`` (min-max scaled) under ``QuantileFilter``;
* ``z>3``: a plain Welford |z| > 3 rule on any feature;
* ``study``: the seed study's batch pipeline (``study_pipeline.py``: windows of 50 frames
  every 10, the 27 window features, Isolation Forest + one-class SVM, both must agree),
  fitted on the clean run of the same metal and temperature (scored in-sample there, as
  the study scored its reference); a flagged window is an alarm at its last frame.

Scoring: an alarm (anomaly or drift event for trajwatch; the first frame of each run of
flagged frames for the baselines) is a true positive when it is the first alarm at or
after the fault frame of a faulty run; every other alarm is a false positive. Delay is
the first true alarm's frame minus the fault frame. False alarms are counted per 10,000
clean frames (the clean runs plus the frames before each fault).

Run ``python benchmarks/bench_detection.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from trajwatch.frame import Frame
from trajwatch.simulate import ABRUPT_FAULTS, FAULTS, MDSpec, run_md

CACHE = Path(os.environ.get("TRAJWATCH_BENCH_CACHE", Path.home() / ".cache" / "trajwatch-bench"))


@dataclass(frozen=True)
class Case:
    """One labelled run: ``fault`` is None for a clean run."""

    spec: MDSpec

    @property
    def fault(self) -> str | None:
        return self.spec.fault

    @property
    def name(self) -> str:
        s = self.spec
        return f"{s.element}-{int(s.temperature)}K-{s.fault or 'clean'}-{s.seed}"


def suite(quick: bool) -> list[Case]:
    """The labelled runs: every fault on every metal and temperature, plus clean runs."""
    if quick:
        metals, temperatures, repeat, steps, clean_steps = ("Cu",), (300.0,), 2, 400, 1500
    else:
        metals, temperatures, repeat, steps = ("Cu", "Al", "Ni"), (300.0, 700.0), 3, 600
        clean_steps = 2000
    fault_frame = steps // 2
    cases = []
    seed = 100
    for element in metals:
        for temperature in temperatures:
            base = MDSpec(element=element, temperature=temperature, repeat=repeat)
            cases.append(Case(replace(base, steps=clean_steps, seed=seed, source="clean")))
            seed += 1
            for fault in FAULTS:
                spec = replace(base, steps=steps, fault=fault, fault_frame=fault_frame, seed=seed)
                cases.append(Case(replace(spec, source=fault)))
                seed += 1
    return cases


SUITE_VERSION = "1"
"""Part of every cache key: bump it when a change to ``trajwatch.simulate`` changes the
trajectories (a new fault, other physics), so the cache is made again."""


def _cache_path(case: Case) -> Path:
    fields = asdict(case.spec)
    if fields.get("potential") == "emt":  # keys made before the option existed stay valid
        del fields["potential"]
    spec = json.dumps(fields, sort_keys=True) + SUITE_VERSION
    key = hashlib.sha256(spec.encode()).hexdigest()[:16]
    return CACHE / f"{case.name}-{key}.npz"


def frames_of(case: Case) -> list[Frame]:
    """The run's frames, from the cache or made (and cached) now."""
    path = _cache_path(case)
    if not path.exists():
        frames = list(run_md(case.spec))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(
            tmp,
            positions=np.stack([f.positions for f in frames]),
            velocities=np.stack([_or_nan(f.velocities, f.n_atoms) for f in frames]),
            forces=np.stack([_or_nan(f.forces, f.n_atoms) for f in frames]).astype(np.float32),
            energy=np.array([math.nan if f.energy is None else f.energy for f in frames]),
            numbers=frames[0].numbers,
            cell=frames[0].cell if frames[0].cell is not None else np.zeros((3, 3)),
            pbc=frames[0].pbc,
            step=np.array([f.step for f in frames]),
            time=np.array([f.time for f in frames], dtype=np.float64),
        )
        tmp.replace(path)
    return list(_load(path, case.spec.source or case.name))


def _or_nan(array: np.ndarray | None, n: int) -> np.ndarray:
    return np.full((n, 3), math.nan) if array is None else array


def _load(path: Path, source: str) -> Iterator[Frame]:
    with np.load(path, allow_pickle=False) as data:
        d = {k: data[k] for k in data.files}
    cell = d["cell"] if np.abs(d["cell"]).sum() > 0 else None
    for i in range(d["positions"].shape[0]):
        yield Frame(
            d["positions"][i],
            d["numbers"],
            velocities=d["velocities"][i],
            forces=d["forces"][i].astype(np.float64),
            energy=float(d["energy"][i]),
            cell=cell,
            pbc=d["pbc"] if cell is not None else None,
            step=int(d["step"][i]),
            time=float(d["time"][i]),
            seq=i,
            source=source,
        )


def generate(quick: bool) -> None:
    """Make (and cache) every trajectory of the suite."""
    cases = suite(quick)
    for n, case in enumerate(cases, 1):
        fresh = not _cache_path(case).exists()
        start = time.perf_counter()
        frames_of(case)
        if fresh:
            print(
                f"[{n}/{len(cases)}] {case.name}: {case.spec.steps} frames "
                f"in {time.perf_counter() - start:.0f} s",
                file=sys.stderr,
                flush=True,
            )


SILENT = 150
"""Frames at the start of every run in which no system may alarm (warm-up + calibration
of the default stack); they are not counted as clean frames either."""

RELEASE = 10
"""Baselines: consecutive unflagged frames that end an event (as trajwatch's hysteresis)."""


@dataclass
class Outcome:
    """One system on one run: the frames at which it raised an alarm."""

    case: Case
    alarms: list[int]
    frames: int

    @property
    def fault_frame(self) -> int | None:
        return None if self.case.fault is None else self.case.spec.fault_frame

    @property
    def clean_frames(self) -> int:
        end = self.frames if self.fault_frame is None else self.fault_frame
        return max(0, end - SILENT)

    @property
    def false_alarms(self) -> int:
        f = self.fault_frame
        return sum(1 for a in self.alarms if f is None or a < f)

    @property
    def delay(self) -> int | None:
        f = self.fault_frame
        after = [a - f for a in self.alarms if f is not None and a >= f]
        return min(after) if after else None

    @property
    def extra(self) -> int:
        f = self.fault_frame
        return max(0, sum(1 for a in self.alarms if f is not None and a >= f) - 1)


def _events(flags: Sequence[bool]) -> list[int]:
    """First frame of each run of flagged frames (runs closer than RELEASE merge)."""
    starts: list[int] = []
    quiet = RELEASE
    for i, flagged in enumerate(flags):
        if flagged:
            if quiet >= RELEASE:
                starts.append(i)
            quiet = 0
        else:
            quiet += 1
    return starts


def run_trajwatch(
    case: Case, frames: list[Frame], config: Any = None
) -> tuple[Outcome, np.ndarray]:
    """The pipeline's alarms (anomaly and drift events) and the features it saw."""
    from trajwatch.pipeline import Pipeline, PipelineConfig

    pipeline = Pipeline(config or PipelineConfig())
    xs = []
    alarms = []
    for frame in frames:
        events = pipeline.process(frame)
        alarms += [e.frame for e in events if e.event in ("anomaly", "drift")]
        xs.append(pipeline.sources[frame.source].last_features.copy())
    return Outcome(case, alarms, len(frames)), np.array(xs)


def run_river_hst(case: Case, xs: np.ndarray, names: Sequence[str], q: float = 0.995) -> Outcome:
    """River's HalfSpaceTrees on min-max scaled features under a QuantileFilter."""
    from river import anomaly, compose, preprocessing

    model = compose.Pipeline(
        preprocessing.MinMaxScaler(),
        anomaly.QuantileFilter(anomaly.HalfSpaceTrees(seed=42), q=q),
    )
    flags = []
    for i, x in enumerate(xs):
        d = {n: float(v) for n, v in zip(names, x, strict=True) if math.isfinite(v)}
        score = model.score_one(d)
        flags.append(i >= SILENT and bool(model["QuantileFilter"].classify(score)))
        model.learn_one(d)
    return Outcome(case, _events(flags), len(xs))


def run_zscore_rule(case: Case, xs: np.ndarray, limit: float = 3.0) -> Outcome:
    """A plain rule: any feature more than ``limit`` running standard deviations away."""
    from trajwatch.detectors.zscore import ZScore

    det = ZScore()
    flags = []
    for i, x in enumerate(xs):
        z = det.deviations(x)
        finite = np.isfinite(x)
        flags.append(i >= SILENT and bool((np.abs(z[finite]) > limit).any()))
        det.learn_one(x)
    return Outcome(case, _events(flags), len(xs))


def run_study(case: Case, xs: np.ndarray, names: Sequence[str], model: Any) -> Outcome:
    """The study's batch pipeline: flagged windows, each an alarm at its last frame."""
    from study_pipeline import window_ends, windows_of

    flagged = model.predict(windows_of(xs, names))
    flags = np.zeros(len(xs), dtype=bool)
    ends = window_ends(len(xs))
    flags[ends[flagged]] = True
    flags[:SILENT] = False
    return Outcome(case, _events(flags.tolist()), len(xs))


def summarise(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Per-fault detection rate and delays, false alarms per 10k clean frames, event F1."""
    per_fault: dict[str, dict[str, Any]] = {}
    for fault in FAULTS:
        runs = [o for o in outcomes if o.case.fault == fault]
        if not runs:
            continue
        delays = [o.delay for o in runs if o.delay is not None]
        per_fault[fault] = {
            "kind": "abrupt" if fault in ABRUPT_FAULTS else "gradual",
            "runs": len(runs),
            "detected": len(delays),
            "rate": len(delays) / len(runs),
            "median_delay": float(np.median(delays)) if delays else None,
            "max_delay": max(delays) if delays else None,
            "extra_events": sum(o.extra for o in runs),
        }
    faulty = [o for o in outcomes if o.case.fault is not None]
    tp = sum(1 for o in faulty if o.delay is not None)
    fp = sum(o.false_alarms for o in outcomes)
    clean = sum(o.clean_frames for o in outcomes)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / len(faulty) if faulty else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "per_fault": per_fault,
        "true_positives": tp,
        "false_alarms": fp,
        "clean_frames": clean,
        "false_alarms_per_10k": 1e4 * fp / clean if clean else math.nan,
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }


def run(quick: bool) -> dict[str, Any]:
    """Evaluate trajwatch and the two baselines on the suite; returns the results."""
    from trajwatch.features.engine import FeatureEngine
    from trajwatch.pipeline import warmup

    warmup()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from study_pipeline import StudyPipeline, available, windows_of

    names = list(FeatureEngine().names)
    outcomes: dict[str, list[Outcome]] = {"trajwatch": [], "river-hst": [], "z>3": []}
    with_study = available()  # scikit-learn installed
    if with_study:
        outcomes["study"] = []
    start = time.perf_counter()
    study: dict[tuple[str, float], StudyPipeline] = {}
    for case in suite(quick):  # each metal and temperature's clean run comes first
        frames = frames_of(case)
        ours, xs = run_trajwatch(case, frames)
        outcomes["trajwatch"].append(ours)
        outcomes["river-hst"].append(run_river_hst(case, xs, names))
        outcomes["z>3"].append(run_zscore_rule(case, xs))
        system = (case.spec.element, case.spec.temperature)
        if not with_study:
            continue
        if case.fault is None:
            study[system] = StudyPipeline().fit(windows_of(xs, names))
        outcomes["study"].append(run_study(case, xs, names, study[system]))
    results = {name: summarise(o) for name, o in outcomes.items()}
    runs = {
        o.case.name: {"fault_frame": o.fault_frame, "alarms": o.alarms}
        for o in outcomes["trajwatch"]
    }
    return {
        "benchmark": "detection",
        "quick": quick,
        "features": names,
        "systems": results,
        "trajwatch_runs": runs,
        "seconds": time.perf_counter() - start,
    }


def table(result: dict[str, Any]) -> str:
    """The report: per fault, then the headline numbers of each system."""
    systems = result["systems"]
    ours = systems["trajwatch"]["per_fault"]
    lines = [
        f"{'fault':<11} {'kind':<8} {'detected':>9} {'median delay':>13} {'max delay':>10}"
        f"   {'river-hst':>10} {'z>3':>10} {'study':>10}",
    ]
    for fault, row in ours.items():
        other = []
        for name in ("river-hst", "z>3", "study"):
            r = systems.get(name, {}).get("per_fault", {}).get(fault)
            other.append(f"{r['detected']}/{r['runs']}" if r else "-")
        med = "-" if row["median_delay"] is None else f"{row['median_delay']:g}"
        mx = "-" if row["max_delay"] is None else f"{row['max_delay']}"
        lines.append(
            f"{fault:<11} {row['kind']:<8} {row['detected']:>4}/{row['runs']:<4} "
            f"{med:>13} {mx:>10}"
            f"   {other[0]:>10} {other[1]:>10} {other[2]:>10}"
        )
    lines.append("")
    lines.append(
        f"{'system':<10} {'FA/10k':>8} {'precision':>10} {'recall':>7} {'F1':>6} {'F1 ratio':>9}"
    )
    best = systems["trajwatch"]["f1"]
    for name, s in systems.items():
        ratio = best / s["f1"] if s["f1"] else math.inf
        lines.append(
            f"{name:<10} {s['false_alarms_per_10k']:>8.2f} {s['precision']:>10.3f} "
            f"{s['recall']:>7.3f} {s['f1']:>6.3f} {ratio:>8.2f}x"
        )
    lines.append(
        f"clean frames: {systems['trajwatch']['clean_frames']}; "
        f"F1 ratio = trajwatch F1 / system F1"
    )
    return "\n".join(lines)


def summary(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The suite's rows: F1 against each baseline, false alarms, detections, delays."""
    from trajwatch.bench import row

    systems = result["systems"]
    ours = systems["trajwatch"]
    names = {"river-hst": "River HST", "z>3": "|z|>3", "study": "study batch"}
    rows = [row("event F1, labelled fault suite", ours["f1"], baseline=systems[k]["f1"],
                baseline_name=label, target=f"> {label}", ok=ours["f1"] > systems[k]["f1"])
            for k, label in names.items() if k in systems]  # fmt: skip
    study = systems.get("study")
    if study is None:
        rows.append(row("study batch pipeline", None, note="skipped: no scikit-learn"))
    rows.append(row("false alarms per 10k clean frames", ours["false_alarms_per_10k"],
                    baseline=study["false_alarms_per_10k"] if study else None,
                    baseline_name="study batch", target="<= 1",
                    ok=ours["false_alarms_per_10k"] <= 1))  # fmt: skip
    faults = ours["per_fault"]
    required = [f for f in faults if f != "degrade"]  # degrade: not one of the issue's
    found = sum(faults[f]["detected"] for f in required)
    runs = sum(faults[f]["runs"] for f in required)
    study_found = sum(study["per_fault"][f]["detected"] for f in required) if study else None
    rows.append(row(f"required faults detected (of {runs})", found, baseline=study_found,
                    baseline_name="study batch", target=f"{runs}/{runs}",
                    ok=found == runs))  # fmt: skip
    for kind, limit in (("abrupt", 5), ("gradual", 100)):
        kinds = [f for f in required if faults[f]["kind"] == kind]
        mine = [faults[f]["median_delay"] for f in kinds]
        worst = None if None in mine else max(mine)
        base, note = None, ""
        if study:
            theirs = {f: study["per_fault"][f]["median_delay"] for f in kinds}
            found_delays = [d for d in theirs.values() if d is not None]
            base = max(found_delays) if found_delays else None
            missed = [f for f, d in theirs.items() if d is None]
            note = f"study batch never finds: {', '.join(missed)}" if missed else ""
        rows.append(row(f"median delay, worst {kind} fault", worst, unit="frames",
                        baseline=base, baseline_name="study batch",
                        target=f"<= {limit} frames", ok=worst is not None and worst <= limit,
                        note=note))  # fmt: skip
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one metal, small runs")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results here")
    parser.add_argument("--generate-only", action="store_true", help="only fill the cache")
    args = parser.parse_args(argv)
    if args.generate_only:
        generate(args.quick)
        return 0
    result = run(args.quick)
    print(table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=_json_default))
    return 0


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__}")


if __name__ == "__main__":
    sys.exit(main())
