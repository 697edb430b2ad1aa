"""The study's headline, reproduced: a trusted run against a run with a wrong potential.

The study trajwatch grew from fitted its batch pipeline on a trusted (AIMD) run and
scored an ML force-field run: 3.6 % of the trusted run's windows were flagged, and 27.9
times as many of the ML run's. Here, with real ASE molecular dynamics (fcc Cu, 300 K,
Langevin, 2 fs per frame):

* **trusted**: EMT runs from several seeds (the reference, like the study's AIMD);
* **held-out**: one more EMT run from another seed (what the reference must accept);
* **wrong potential**: the same system under a Lennard-Jones fit to copper for the whole
  run (``MDSpec(potential="lj-cu")``): stable, fcc, nearly the right lattice constant
  and energy, but twice too stiff; a stand-in for a broken ML force field.

trajwatch runs in reference mode: the default detector stack is fitted on the trusted
runs (self-baseline over each, the first ``window`` frames of each left out while the
feature window fills), frozen, and each other run is judged against it
(``Pipeline(reference=...)``, as ``trajwatch scan --reference``).

**Anomaly rate** = the fraction of scored frames (every frame after the stack's 50-frame
warm-up) that are inside an alarm (from the frame an ``anomaly`` event is raised to the
frame before its ``recovered`` event) or carry a ``drift`` event. That is what a user of
the monitor sees flagged.
The JSON also has the fraction of frames whose fused p-value alone is below the alarm
level (surprise > 8). **Ratio** = rate on the wrong-potential run / rate on the
held-out run; when no held-out frame is flagged, the rate is taken as one frame
(1 / frames scored), so the ratio is a lower bound.

The baseline is the study's own batch pipeline (``study_pipeline.py``) on the same runs:
fitted on the trusted runs' windows, anomaly rate = fraction of windows flagged.

Trajectories are cached like the fault suite's (``bench_detection.frames_of``).

    python benchmarks/bench_headline.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
try:
    import trajwatch  # noqa: F401
except ImportError:  # running from a source checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bench_detection import Case, frames_of
from study_pipeline import StudyPipeline, available, windows_of
from trajwatch.detectors.stack import DetectorStack
from trajwatch.features.engine import FeatureEngine
from trajwatch.frame import Frame
from trajwatch.pipeline import Pipeline, PipelineConfig, SourceWatch
from trajwatch.simulate import MDSpec

TARGET_RATE = 0.005
TARGET_RATIO = 100.0
STUDY = {"reference_rate": 0.036, "ratio": 27.9}


@dataclass(frozen=True)
class Plan:
    """The runs of one headline experiment."""

    repeat: int
    frames: int
    trusted_seeds: tuple[int, ...]
    heldout_seed: int
    wrong_seed: int

    def spec(self, seed: int, potential: str = "emt", source: str = "") -> MDSpec:
        return MDSpec(element="Cu", temperature=300.0, repeat=self.repeat, steps=self.frames,
                      seed=seed, potential=potential, source=source)  # fmt: skip


FULL = Plan(repeat=3, frames=2000, trusted_seeds=(501, 502, 503), heldout_seed=504, wrong_seed=505)
QUICK = Plan(repeat=2, frames=800, trusted_seeds=(601, 602, 603), heldout_seed=604, wrong_seed=605)


def fit_reference_runs(
    runs: list[list[Frame]], config: PipelineConfig
) -> tuple[DetectorStack, list[np.ndarray]]:
    """The reference model fitted on several trusted runs, and each run's feature vectors.

    ``trajwatch.pipeline.fit_reference`` takes one stream; several runs back to back
    would put a jump at each seam. Here each run gets its own feature engine and the
    stack learns only full-window vectors (frame ``window`` on), as a judged stream's
    stack scores only after its warm-up.
    """
    probe = SourceWatch("probe", config)
    stack = DetectorStack(config.stack_config(probe.names), n_features=len(probe.names))
    all_xs = []
    for frames in runs:
        engine = FeatureEngine(window=config.window, top_atoms=config.top_atoms)
        xs = np.array([engine.update(f) for f in frames])
        for x in xs[config.window :]:
            stack.update(x[probe.scored])
        all_xs.append(xs)
    stack.meta = {
        "feature_names": list(probe.names),
        "window": config.window,
        "top_atoms": config.top_atoms,
        "frames": sum(len(r) - config.window for r in runs),
    }
    stack.freeze()
    stack.reset_stream()
    return stack, all_xs


def judge(
    frames: list[Frame], model: DetectorStack, config: PipelineConfig
) -> tuple[dict[str, Any], np.ndarray]:
    """One run through a reference-mode pipeline: rates, events, and the features seen."""
    pipeline = Pipeline(config, reference=model)
    inside, surprise, xs = [], [], []
    events = []
    for frame in frames:
        new = pipeline.process(frame)
        events += new
        watch = pipeline.sources[frame.source]
        inside.append(watch.stack.alarm.active or any(e.event == "drift" for e in new))
        surprise.append(watch.last_score)
        xs.append(watch.last_features.copy())
    scored = slice(config.warmup_frames, None)
    alarm = np.array(inside[scored])
    flagged = np.array(surprise[scored]) > config.threshold
    return {
        "frames": len(frames),
        "scored_frames": int(alarm.size),
        "alarm_frames": int(alarm.sum()),
        "rate": float(alarm.mean()),
        "pvalue_rate": float(flagged.mean()),
        "anomaly_events": sum(e.event == "anomaly" for e in events),
        "drift_events": sum(e.event == "drift" for e in events),
        "first_alarm": next((e.frame for e in events if e.event == "anomaly"), None),
    }, np.array(xs)


def _ratio(wrong: float, reference: float, scored: int) -> tuple[float, bool]:
    """wrong / reference, the reference floored at one frame; (ratio, is a lower bound)."""
    floor = 1.0 / max(scored, 1)
    return wrong / max(reference, floor), reference < floor


def run(quick: bool = False) -> dict[str, Any]:
    """Fit on the trusted runs, judge the held-out and wrong-potential runs; both systems."""
    from trajwatch.pipeline import warmup

    warmup()
    plan = QUICK if quick else FULL
    start = time.perf_counter()
    trusted = [frames_of(Case(plan.spec(s, source=f"trusted-{s}"))) for s in plan.trusted_seeds]
    heldout = frames_of(Case(plan.spec(plan.heldout_seed, source="heldout")))
    wrong = frames_of(Case(plan.spec(plan.wrong_seed, "lj-cu", source="wrong-potential")))
    generated = time.perf_counter() - start

    config = PipelineConfig()
    model, trusted_xs = fit_reference_runs(trusted, config)
    ours_ref, heldout_xs = judge(heldout, model, config)
    ours_wrong, wrong_xs = judge(wrong, model, config)
    ratio, bound = _ratio(ours_wrong["rate"], ours_ref["rate"], ours_ref["scored_frames"])

    names = list(FeatureEngine().names)
    study_result = None
    if available():  # scikit-learn installed
        study = StudyPipeline().fit(np.vstack([windows_of(xs, names) for xs in trusted_xs]))
        study_ref = study.predict(windows_of(heldout_xs, names))
        study_wrong = study.predict(windows_of(wrong_xs, names))
        rate_ref, rate_wrong = float(study_ref.mean()), float(study_wrong.mean())
        s_ratio, s_bound = _ratio(rate_wrong, rate_ref, study_ref.size)
        study_result = {
            "windows_reference": int(study_ref.size),
            "windows_wrong": int(study_wrong.size),
            "reference_rate": rate_ref,
            "wrong_rate": rate_wrong,
            "ratio": s_ratio,
            "ratio_is_lower_bound": s_bound,
        }
    return {
        "benchmark": "headline",
        "quick": quick,
        "system": f"Cu fcc, {4 * plan.repeat**3} atoms, 300 K, Langevin, 2 fs per frame",
        "wrong_potential": "Lennard-Jones fit to Cu (eps 0.4093 eV, sigma 2.338 A), whole run",
        "trusted_runs": len(trusted),
        "frames_per_run": plan.frames,
        "trajwatch": {
            "reference": ours_ref,
            "wrong": ours_wrong,
            "ratio": ratio,
            "ratio_is_lower_bound": bound,
            "model_frames": model.meta["frames"],
        },
        "study_pipeline": study_result,
        "study_paper": STUDY,
        "targets": {"reference_rate": TARGET_RATE, "ratio": TARGET_RATIO},
        "pass": bool(ours_ref["rate"] <= TARGET_RATE and ratio >= TARGET_RATIO),
        "data_seconds": generated,
        "seconds": time.perf_counter() - start,
    }


def summary(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The suite's rows: the rate on each run and the ratio, beside the study's pipeline."""
    from trajwatch.bench import row

    ours, study = result["trajwatch"], result["study_pipeline"] or {}
    ref, wrong = ours["reference"], ours["wrong"]
    bound = " (lower bound: no held-out frame flagged)" if ours["ratio_is_lower_bound"] else ""
    paper = result["study_paper"]
    skipped = "" if study else "; study pipeline skipped: no scikit-learn"

    def pct(key: str) -> float | None:
        return 100 * study[key] if key in study else None

    return [
        row("anomaly rate, held-out trusted run", 100 * ref["rate"], unit="%",
            baseline=pct("reference_rate"), baseline_name="study batch",
            target=f"<= {100 * TARGET_RATE:g} %", ok=ref["rate"] <= TARGET_RATE,
            note=f"study paper: {100 * paper['reference_rate']:g} %{skipped}"),
        row("anomaly rate, wrong-potential run", 100 * wrong["rate"], unit="%",
            baseline=pct("wrong_rate"), baseline_name="study batch"),
        row("rate ratio, wrong / trusted", ours["ratio"], baseline=study.get("ratio"),
            baseline_name="study batch", target=f">= {TARGET_RATIO:g}",
            ok=ours["ratio"] >= TARGET_RATIO,
            note=f"study paper: {paper['ratio']:g}x{bound}"),
    ]  # fmt: skip


def print_table(result: dict[str, Any]) -> None:
    ours, study = result["trajwatch"], result["study_pipeline"]
    print(f"headline ({'quick' if result['quick'] else 'full'}): {result['system']}")
    print(f"reference: {result['trusted_runs']} trusted EMT runs of {result['frames_per_run']} "
          f"frames; wrong potential: {result['wrong_potential']}")  # fmt: skip
    print()
    print(f"{'':<30}{'held-out':>10}{'wrong pot.':>12}{'ratio':>9}")
    ref, wrong = ours["reference"], ours["wrong"]
    mark = ">=" if ours["ratio_is_lower_bound"] else ""
    print(f"{'trajwatch (frames flagged)':<30}{100 * ref['rate']:>9.2f}%"
          f"{100 * wrong['rate']:>11.2f}%{mark:>4}{ours['ratio']:>5.0f}x")  # fmt: skip
    print(f"{'trajwatch (p below 1e-8)':<30}{100 * ref['pvalue_rate']:>9.2f}%"
          f"{100 * wrong['pvalue_rate']:>11.2f}%")  # fmt: skip
    if study:
        smark = ">=" if study["ratio_is_lower_bound"] else ""
        print(f"{'study pipeline (windows)':<30}{100 * study['reference_rate']:>9.2f}%"
              f"{100 * study['wrong_rate']:>11.2f}%{smark:>4}{study['ratio']:>5.1f}x")  # fmt: skip
    else:
        print("study pipeline: skipped (pip install scikit-learn)")
    paper = result["study_paper"]
    print(
        f"{'study paper':<30}{100 * paper['reference_rate']:>9.2f}%{'':>12}{paper['ratio']:>9.1f}x"
    )
    print()
    print(f"trajwatch events: held-out {ref['anomaly_events']} anomaly, {ref['drift_events']} "
          f"drift; wrong potential {wrong['anomaly_events']} anomaly (first at frame "
          f"{wrong['first_alarm']}), {wrong['drift_events']} drift")  # fmt: skip
    t = result["targets"]
    print(
        f"targets: rate <= {100 * t['reference_rate']:g} %, ratio >= {t['ratio']:g}: "
        f"{'PASS' if result['pass'] else 'FAIL'}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 atoms, shorter runs")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    result = run(quick=args.quick)
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
