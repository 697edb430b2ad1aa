"""LSTM autoencoder benchmark: window inference at batch 1 and batched, and the pipeline.

All on one CPU thread (``torch.set_num_threads(1)``), with the shipped model when its
features match the engine's (else an untrained model of the same shape: same cost).
Times are the thread's CPU time by default (``--clock cpu``: what one core delivers, even
on a machine shared with other work), or wall-clock time (``--clock wall``). Each
figure is the best of several repeats, all measured in this run:

* batch 1: one window of ``window`` frames through the network alone, and through
  :meth:`LSTMDetector.score_one` (standardise, append, score, per-feature errors);
  also the network traced with ``torch.jit.trace``, to show what tracing would buy;
* batched: windows per second through :meth:`LSTMDetector.score_many` (stride 1, batches
  of up to 256 windows), and its speed-up over batch 1;
* pipeline: frames per second through :class:`~trajwatch.pipeline.Pipeline` at 100 atoms
  (real EMT Cu frames cut to 100 atoms), without the LSTM, with it frame by frame
  (``process``) and with it batched (``prefetch`` of chunks of 64 frames, then
  ``process``: what scan does, and the monitor when frames queue up), and the ratio to
  the no-LSTM pipeline.

Targets (issue #6): batch 1 <= 1 ms, batched >= 10,000 windows/s, pipeline with the LSTM
>= 5,000 frames/s at 100 atoms.

    python benchmarks/bench_lstm.py [--quick] [--clock cpu|wall] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

try:
    import trajwatch  # noqa: F401
except ImportError:  # running from a source checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch

from trajwatch.detectors.lstm import LSTMDetector
from trajwatch.features.engine import FeatureEngine
from trajwatch.features.engine import warmup as features_warmup
from trajwatch.frame import Frame
from trajwatch.lstm import LSTMAutoencoder, LSTMModel, default_model_path, feature_matrix
from trajwatch.lstm.calibration import Calibration
from trajwatch.lstm.scaler import Scaler
from trajwatch.simulate import MDSpec, run_md

TARGET_BATCH1_MS = 1.0
TARGET_WINDOWS_PER_S = 10_000.0
TARGET_PIPELINE_FPS = 5_000.0
CHUNK = 64
CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.thread_time, "wall": time.perf_counter}
_now = time.thread_time


def best_of(repeats: int, fn: Callable[[], float]) -> float:
    """Smallest of ``repeats`` measurements (the least disturbed by other processes)."""
    return min(fn() for _ in range(repeats))


def load_model(names: tuple[str, ...]) -> tuple[LSTMModel, str]:
    path = default_model_path()
    if path.is_file():
        model = LSTMModel.load(path)
        if model.features == names:
            return model, "shipped"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        network = LSTMAutoencoder(len(names))
    rng = np.random.default_rng(0)
    scaler = Scaler.fit(rng.normal(size=(100, len(names))))
    calibration = Calibration.from_errors(rng.exponential(size=100), np.ones((100, len(names))))
    return LSTMModel(network, scaler, calibration, names, 50), "untrained (same shape)"


def _first_atoms(f: Frame, n: int) -> Frame:
    velocities = None if f.velocities is None else f.velocities[:n]
    forces = None if f.forces is None else f.forces[:n]
    return Frame(
        f.positions[:n], f.numbers[:n], velocities=velocities, forces=forces, energy=f.energy,
        cell=f.cell, pbc=f.pbc, step=f.step, time=f.time, source=f.source,
    )  # fmt: skip


def frames_100_atoms(steps: int) -> list[Frame]:
    """Real EMT Cu frames (108 atoms) cut to their first 100 atoms (the run is cached
    with the fault suite's, ``bench_detection.frames_of``)."""
    spec = MDSpec(element="Cu", repeat=3, steps=steps, seed=5, source="bench")
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_detection import Case, frames_of
    except ImportError:  # copied out on its own
        return [_first_atoms(f, 100) for f in run_md(spec)]
    return [_first_atoms(f, 100) for f in frames_of(Case(spec))]


def run(quick: bool, clock: str = "cpu") -> dict[str, Any]:
    """Measure everything; returns the figures (also what ``--json`` writes)."""
    global _now
    _now = CLOCKS[clock]
    torch.set_num_threads(1)
    features_warmup()
    repeats = 3 if quick else 7
    names = tuple(FeatureEngine().names)
    model, which = load_model(names)
    w = model.window
    frames = frames_100_atoms(400 if quick else 800)
    X = feature_matrix(frames)
    n_calls = 200 if quick else 1000

    window = torch.from_numpy(model.scaler.transform(X[100 : 100 + w])[0][None])
    with torch.inference_mode():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model.network, window)  # type: ignore[no-untyped-call]

        def per_call(net: Callable[[torch.Tensor], torch.Tensor]) -> float:
            start = _now()
            for _ in range(n_calls):
                net(window)
            return (_now() - start) / n_calls

        per_call(model.network), per_call(traced)  # first calls allocate
        # interleaved, so that both see the same machine load
        pairs = [(per_call(model.network), per_call(traced)) for _ in range(repeats)]
        net_s = min(a for a, _ in pairs)
        traced_s = min(b for _, b in pairs)

    first = model.first_scored_frame + 1  # frames before the first scored window

    def detector_once() -> float:
        det = LSTMDetector(model)
        det.score_many(X[:first])
        rows = X[first : first + n_calls]
        start = _now()
        for x in rows:
            det.score_one(x)
        return float((_now() - start) / rows.shape[0])

    detector_s = best_of(repeats, detector_once)

    def batched_once() -> float:
        det = LSTMDetector(model, max_batch=256)
        start = _now()
        det.score_many(X)
        return float((X.shape[0] - first + 1) / (_now() - start))

    windows_per_s = max(batched_once() for _ in range(repeats))

    result: dict[str, Any] = {
        "model": which,
        "features": len(names),
        "window": w,
        "hidden": model.network.hidden,
        "latent": model.network.latent,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "clock": clock,
        "batch1_network_ms": net_s * 1e3,
        "batch1_traced_ms": traced_s * 1e3,
        "batch1_detector_ms": detector_s * 1e3,
        "batched_windows_per_s": windows_per_s,
        "batched_speedup_over_batch1": windows_per_s * detector_s,
        "traced_speedup": net_s / traced_s,
    }
    result.update(pipeline_figures(frames, model, repeats))
    return result


def pipeline_figures(frames: list[Frame], model: LSTMModel, repeats: int) -> dict[str, Any]:
    """Frames/s of the pipeline without and with the LSTM (frame by frame, batched)."""
    from trajwatch.pipeline import Pipeline

    def fps(lstm: LSTMModel | None, chunk: int) -> float:
        pipeline = Pipeline(lstm=lstm)
        start = _now()
        for lo in range(0, len(frames), chunk):
            batch = frames[lo : lo + chunk]
            if chunk > 1:
                pipeline.prefetch(batch)
            for frame in batch:
                pipeline.process(frame)
        return len(frames) / (_now() - start)

    fps(model, CHUNK)  # compile the detector kernels before timing
    base = max(fps(None, 1) for _ in range(repeats))
    per_frame = max(fps(model, 1) for _ in range(repeats))
    batched = max(fps(model, CHUNK) for _ in range(repeats))
    return {
        "atoms": frames[0].n_atoms,
        "pipeline_fps": base,
        "pipeline_lstm_per_frame_fps": per_frame,
        "pipeline_lstm_batched_fps": batched,
        "lstm_cost_us_per_frame_batched": (1 / batched - 1 / base) * 1e6,
        "lstm_cost_us_per_frame_single": (1 / per_frame - 1 / base) * 1e6,
    }


def summary(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The suite's rows: batch-1 and batched inference, the pipeline with the LSTM."""
    from trajwatch.bench import row

    batch1 = r["batch1_detector_ms"]
    note = f"{r['clock']} time, 1 thread, {r['model']} model"
    return [
        row("LSTM window, batch 1 (score_one)", batch1, unit="ms",
            baseline=r["batch1_network_ms"], baseline_name="network alone",
            target=f"<= {TARGET_BATCH1_MS:g} ms", ok=batch1 <= TARGET_BATCH1_MS, note=note),
        row("LSTM windows, batched (score_many)", r["batched_windows_per_s"], unit="windows/s",
            baseline=1e3 / batch1, baseline_name="batch 1",
            target=f">= {TARGET_WINDOWS_PER_S:,.0f}/s",
            ok=r["batched_windows_per_s"] >= TARGET_WINDOWS_PER_S),
        row(f"pipeline + LSTM batched, {r['atoms']} atoms", r["pipeline_lstm_batched_fps"],
            unit="frames/s", baseline=r["pipeline_fps"], baseline_name="no LSTM",
            target=f">= {TARGET_PIPELINE_FPS:,.0f}/s",
            ok=r["pipeline_lstm_batched_fps"] >= TARGET_PIPELINE_FPS),
        row(f"pipeline + LSTM frame by frame, {r['atoms']} atoms",
            r["pipeline_lstm_per_frame_fps"], unit="frames/s", baseline=r["pipeline_fps"],
            baseline_name="no LSTM"),
    ]  # fmt: skip


def table(r: dict[str, Any]) -> str:
    rows = [
        ("batch-1 window, network only", f"{r['batch1_network_ms']:.3f} ms",
         f"{TARGET_BATCH1_MS / r['batch1_network_ms']:.1f}x under 1 ms"),
        ("batch-1 window, traced network", f"{r['batch1_traced_ms']:.3f} ms",
         f"{r['traced_speedup']:.2f}x eager"),
        ("batch-1 window, LSTMDetector.score_one", f"{r['batch1_detector_ms']:.3f} ms",
         f"{TARGET_BATCH1_MS / r['batch1_detector_ms']:.1f}x under 1 ms"),
        ("batched windows (score_many)", f"{r['batched_windows_per_s']:,.0f} /s",
         f"{r['batched_windows_per_s'] / TARGET_WINDOWS_PER_S:.1f}x 10,000/s; "
         f"{r['batched_speedup_over_batch1']:.1f}x batch 1"),
        (f"pipeline, {r['atoms']} atoms, no LSTM", f"{r['pipeline_fps']:,.0f} fps",
         f"{r['pipeline_fps'] / TARGET_PIPELINE_FPS:.2f}x 5,000 fps"),
        ("pipeline + LSTM, frame by frame", f"{r['pipeline_lstm_per_frame_fps']:,.0f} fps",
         f"{r['pipeline_lstm_per_frame_fps'] / r['pipeline_fps']:.2f}x no LSTM"),
        ("pipeline + LSTM, batched (64)", f"{r['pipeline_lstm_batched_fps']:,.0f} fps",
         f"{r['pipeline_lstm_batched_fps'] / TARGET_PIPELINE_FPS:.2f}x 5,000 fps; "
         f"{r['pipeline_lstm_batched_fps'] / r['pipeline_fps']:.2f}x no LSTM"),
    ]  # fmt: skip
    width = max(len(a) for a, _, _ in rows)
    head = (
        f"LSTM autoencoder ({r['model']}): {r['features']} features, window {r['window']}, "
        f"hidden {r['hidden']}, latent {r['latent']}, torch {r['torch']}, "
        f"{r['threads']} thread, {r['clock']} time"
    )
    lines = [head, ""] + [f"{a:<{width}}  {b:>14}  {c}" for a, b, c in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames and repeats")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the figures here")
    parser.add_argument(
        "--clock", choices=sorted(CLOCKS), default="cpu", help="thread CPU time or wall clock"
    )
    args = parser.parse_args(argv)
    result = run(args.quick, args.clock)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
