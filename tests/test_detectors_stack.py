"""Thresholds, fusion, drift, evidence and the stack that joins them."""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from trajwatch.detectors import state
from trajwatch.detectors.drift import DriftWatch
from trajwatch.detectors.evidence import Cusum, atoms, top_features
from trajwatch.detectors.fusion import Fusion
from trajwatch.detectors.stack import DetectorStack, StackConfig
from trajwatch.detectors.threshold import Calibrator, ConformalThreshold, QuantileThreshold
from trajwatch.detectors.zscore import ZScore
from trajwatch.events import FeatureDeviation

RNG = np.random.default_rng


# ----------------------------------------------------------------------------- thresholds


def test_calibrated_p_values_are_uniform_on_normal_data() -> None:
    cal = Calibrator(2000)
    rng = RNG(0)
    for s in rng.exponential(size=2000):
        cal.add(s)
    p = np.array([10 ** -cal.surprise(s) for s in rng.exponential(size=4000)])
    assert abs((p < 0.1).mean() - 0.1) < 0.02
    assert abs((p < 0.01).mean() - 0.01) < 0.006
    assert cal.surprise(100.0) > 30  # far beyond the data: tiny, finite p
    assert math.isfinite(cal.surprise(1e6))


ThresholdFactory = Callable[[ZScore], ConformalThreshold | QuantileThreshold]
THRESHOLDS: dict[str, ThresholdFactory] = {
    "conformal": lambda d: ConformalThreshold(d, alpha=1e-5, warmup=50, release_frames=5),
    "quantile": lambda d: QuantileThreshold(d, q=0.999, margin=2.0, warmup=50, release_frames=5),
}


@pytest.mark.parametrize("kind", sorted(THRESHOLDS))
def test_threshold_gives_one_start_and_one_end_per_fault(kind: str) -> None:
    th = THRESHOLDS[kind](ZScore())
    rng = RNG(1)
    xs = rng.normal(size=(900, 4))
    xs[600:640, 2] += 30.0  # a fault lasting 40 frames
    verdicts = [th.update(x) for x in xs]
    changes = [(i, v.change) for i, v in enumerate(verdicts) if v.change]
    assert changes == [(600, "start"), (644, "end")]


@pytest.mark.parametrize("kind", sorted(THRESHOLDS))
def test_threshold_is_silent_in_warm_up_and_never_learns_flagged_frames(kind: str) -> None:
    det = ZScore()
    th = THRESHOLDS[kind](det)
    rng = RNG(2)
    xs = rng.normal(size=(300, 3))
    xs[10, 0] = 1e3  # in warm-up: learned, but no alarm
    assert not any(th.update(x).change for x in xs[:50])
    for x in xs[50:]:
        th.update(x)
    count = det.count.copy()
    th.update(np.array([1e6, 0.0, 0.0]))
    np.testing.assert_array_equal(det.count, count)  # the flagged frame was not learned


# ----------------------------------------------------------------------------- fusion


def test_cauchy_fusion_is_carried_by_one_strong_detector_and_not_diluted() -> None:
    fuse = Fusion("cauchy", n=4)
    assert fuse(np.array([30.0, 0.0, 0.0, 0.0])) > 29
    assert fuse(np.array([3.0, 3.0, 3.0, 3.0])) == pytest.approx(3.0, abs=0.01)
    assert fuse(np.zeros(4)) < 0.1


def test_vote_needs_k_detectors() -> None:
    vote = Fusion("vote", n=3, k=2)
    assert vote(np.array([50.0, 0.0, 0.0])) == 0.0
    assert vote(np.array([50.0, 9.0, 0.0])) == 9.0


def test_fisher_and_min_are_available() -> None:
    s = np.array([8.0, 1.0])
    assert Fusion("min", n=2)(s) == pytest.approx(8.0 - math.log10(2))
    assert Fusion("fisher", n=2)(s) > 7.0
    assert Fusion("fisher", n=2)(np.array([500.0, 400.0])) > 800.0
    with pytest.raises(ValueError):
        Fusion("mean", n=2)


# ----------------------------------------------------------------------------- drift


def test_drift_watch_finds_a_slow_ramp_and_reports_it_once() -> None:
    watch = DriftWatch(block=10, cooldown=10_000)
    rng = RNG(3)
    found = []
    for t, z in enumerate(rng.normal(size=(3000, 5))):
        if t >= 1000:
            z[3] += 0.004 * (t - 1000)  # +4 sd after 1000 frames
        found += [(t, c.feature) for c in watch.update(z)]
    assert len(found) == 1
    t, feature = found[0]
    assert feature == 3 and 1000 < t < 1800


def test_drift_watch_is_quiet_on_stationary_noise() -> None:
    watch = DriftWatch(block=10)
    rng = RNG(4)
    assert not any(watch.update(z) for z in rng.normal(size=(20_000, 5)))


# ----------------------------------------------------------------------------- evidence


def test_cusum_onset_backtracks_to_the_start_of_a_slow_rise() -> None:
    c = Cusum(reference=1.0)
    surprises = [0.3] * 100 + [1.0 + 0.1 * i for i in range(40)]
    for i, s in enumerate(surprises):
        c.update(i, s)
    assert 100 <= c.onset(139) <= 102
    c2 = Cusum()
    for i, s in enumerate([0.2] * 50 + [math.inf]):
        c2.update(i, s)
    assert c2.onset(50) == 50


def test_top_features_put_non_finite_values_first() -> None:
    names = ["a", "b", "c", "d"]
    x = np.array([1.0, np.nan, 3.0, 4.0])
    z = np.array([2.0, math.inf, -9.0, np.nan])
    got = top_features(names, x, z, 3)
    assert [f.name for f in got] == ["b", "c", "a"]
    assert got[1].deviation == -9.0


def test_atoms_lead_with_the_pair_for_structural_features() -> None:
    attribution = SimpleNamespace(moved_most=np.array([7, 3, 1]), closest_pair=(3, 12))
    dist = [FeatureDeviation("step_min_dist", 0.9, -40.0)]
    move = [FeatureDeviation("step_disp_max", 0.9, 40.0)]
    assert atoms(attribution, dist, 2) == [3, 12, 7]
    assert atoms(attribution, move, 2) == [7, 3, 12]
    assert atoms(None, move, 2) == []


# ----------------------------------------------------------------------------- stack

SMALL = StackConfig(warmup_frames=30, min_calibration=50, drift=False)


def _stream(n: int, seed: int = 5, d: int = 6) -> np.ndarray:
    return RNG(seed).normal(1.0, 0.1, size=(n, d))


ALL_FOUR = ("zscore", "robust", "hst", "loda")


@pytest.mark.parametrize("detectors", [SMALL.detectors, ALL_FOUR])
@pytest.mark.parametrize("fusion", ["cauchy", "vote"])
def test_stack_catches_a_jump_once_with_onset_and_recovers(
    fusion: str, detectors: tuple[str, ...]
) -> None:
    stack = DetectorStack(StackConfig(**{**vars(SMALL), "fusion": fusion, "detectors": detectors}))
    xs = _stream(900)
    xs[700:720] += 5.0  # every feature jumps: all detectors see it
    steps = [stack.update(x) for x in xs]
    changes = [(s.index, s.change) for s in steps if s.change]
    assert changes[0] == (700, "start") and changes[1][1] == "end" and len(changes) == 2
    assert steps[700].onset == 700
    assert stack.severity(steps[700].surprise) == "critical"


@pytest.mark.parametrize("detectors", [SMALL.detectors, ALL_FOUR])
def test_stack_does_not_alarm_on_clean_data(detectors: tuple[str, ...]) -> None:
    stack = DetectorStack(StackConfig(**{**vars(SMALL), "detectors": detectors}))
    assert not any(stack.update(x).change for x in _stream(3000, seed=6))


def test_stack_non_finite_feature_is_critical() -> None:
    stack = DetectorStack(SMALL)
    for x in _stream(300):
        stack.update(x)
    x = _stream(1, seed=7)[0]
    x[2] = np.nan
    step = stack.update(x)
    assert step.change == "start" and step.surprise == math.inf
    assert stack.severity(step.surprise) == "critical"


def test_stack_raises_drift_on_a_slow_ramp() -> None:
    stack = DetectorStack(StackConfig(warmup_frames=30, min_calibration=50, drift_block=10))
    xs = _stream(3000, seed=8)
    xs[1000:, 4] += 0.1 * 0.004 * np.arange(2000)  # +4 sd after 1000 frames
    drifts = [(s.index, c.feature) for s in map(stack.update, xs) for c in s.drift]
    assert drifts and drifts[0][1] == 4 and drifts[0][0] > 1000


def test_reference_mode_judges_without_learning(tmp_path: Path) -> None:
    model = DetectorStack(SMALL).fit(_stream(600)).freeze()
    model = state.load(state.save(model, tmp_path / "model.npz"))
    judge = model.spawn()
    assert judge.frozen and judge.frames == 0
    before = state.save(judge, tmp_path / "before.json").read_text()
    shifted = _stream(200, seed=9) + 1.0  # 10 sd off the trusted run, all along
    steps = [judge.update(x) for x in shifted]
    assert [s.change for s in steps if s.change] == ["start"]
    assert steps[SMALL.warmup_frames].change == "start"
    judge.reset_stream()
    assert state.save(judge, tmp_path / "after.json").read_text() == before
    # self-baseline on the same run learns it as normal instead
    own = DetectorStack(SMALL)
    assert not any(own.update(x).change for x in shifted)


def test_stack_state_round_trip_continues_identically(tmp_path: Path) -> None:
    a = DetectorStack(SMALL)
    xs = _stream(700)
    for x in xs[:400]:
        a.update(x)
    b = state.load(state.save(a, tmp_path / "stack.npz"))
    # the per-stream runtime is not part of the model: hand b a copy of a's
    b.alarm, b.cusum, b.drift = copy.deepcopy((a.alarm, a.cusum, a.drift))
    for x in xs[400:]:
        sa, sb = a.update(x), b.update(x)
        assert sa.surprise == pytest.approx(sb.surprise)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="unknown detector"):
        StackConfig(detectors=("zscore", "nope"))
    with pytest.raises(ValueError, match="release"):
        StackConfig(threshold=1.0, release=2.0)


def test_a_worse_fault_during_a_mild_alarm_escalates_once() -> None:
    stack = DetectorStack(SMALL)
    xs = _stream(900)
    xs[700:760, 1] += 1.2  # a mild, lasting deviation (12 sd)
    xs[730:735] += 50.0  # then something breaks
    changes = [(s.index, s.change) for s in map(stack.update, xs) if s.change]
    assert changes[0] == (700, "start")
    assert (730, "escalate") in changes
    assert [c for _, c in changes].count("escalate") == 1
    assert changes[-1][1] == "end"


# ----------------------------------------------------------------------------- fused path


def _faulty_stream(n: int = 1600, d: int = 7) -> np.ndarray:
    """Noise with every kind of event the stack knows: alarms that start, end and
    escalate, a feature gone NaN, and a slow ramp for drift detection."""
    xs = RNG(20).normal(1.0, 0.1, size=(n, d))
    xs[400:420] += 3.0
    xs[700:760, 1] += 1.2
    xs[730:735] += 50.0
    xs[900, 3] = np.nan
    xs[1000:, 4] += np.linspace(0.0, 1.0, n - 1000)
    return xs


def _steps(stack: DetectorStack, xs: np.ndarray) -> list[tuple[object, ...]]:
    return [
        (s.index, s.surprise, s.change, s.onset, s.drift, tuple(s.surprises))
        for s in map(stack.update, xs)
    ]


@pytest.mark.parametrize(
    "detectors", [("zscore", "robust"), ("robust", "zscore"), ("zscore",), ("robust",)]
)
@pytest.mark.parametrize("fusion", ["cauchy", "min", "vote"])
def test_fused_stack_gives_exactly_what_the_general_path_gives(
    detectors: tuple[str, ...], fusion: str
) -> None:
    config = StackConfig(detectors=detectors, fusion=fusion, drift_block=10, vote_k=1)
    fused, general = DetectorStack(config), DetectorStack(config)
    general.fused = False
    xs = _faulty_stream()
    expected = _steps(general, xs)
    assert fused._fused is None  # before warm-up ends it has not chosen yet
    got = _steps(fused, xs)
    assert fused._fused is not None and general._fused is None
    assert got == expected
    kinds = {s[2] for s in got}
    assert {"start", "end"} <= kinds
    assert "escalate" in kinds or detectors == ("robust",)
    assert any(s[4] for s in got)  # drift was found, the same way


def test_fused_stack_judges_a_reference_like_the_general_path(tmp_path: Path) -> None:
    model = DetectorStack(SMALL).fit(_stream(600)).freeze()
    shifted = _faulty_stream(d=6)[:700] + 0.05
    judges = [model.spawn(), model.spawn()]
    judges[1].fused = False
    a, b = (_steps(j, shifted) for j in judges)
    assert a == b and any(s[2] == "start" for s in a)
    # the model itself, frozen after fitting, judges the same way too (its surprises
    # buffer still holds the fit's last values during the warm-up: compare the rest)
    model.reset_stream()
    assert [s[:5] for s in _steps(model, shifted)] == [s[:5] for s in a]


def test_stack_is_not_fused_for_other_detectors_or_fisher() -> None:
    xs = _stream(200)
    for config in (
        StackConfig(**{**vars(SMALL), "detectors": ALL_FOUR}),
        StackConfig(**{**vars(SMALL), "fusion": "fisher"}),
    ):
        stack = DetectorStack(config)
        for x in xs:
            stack.update(x)
        assert stack._fused is None


@pytest.mark.skipif(
    os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="compilation only happens with the JIT on"
)
def test_warmup_compiles_what_the_default_stack_runs() -> None:
    from trajwatch.detectors import _kernels
    from trajwatch.detectors.stack import warmup

    warmup()
    kernels = [k for k in vars(_kernels).values() if hasattr(k, "signatures")]
    before = {k: len(k.signatures) for k in kernels}
    stack = DetectorStack(StackConfig(drift_block=5))
    xs = _faulty_stream()
    for x in xs[:600]:
        stack.update(x)
    assert stack._fused is not None
    assert {k: len(k.signatures) for k in kernels} == before


@pytest.mark.parametrize("detectors", [("zscore", "robust", "lstm"), ("lstm", "robust")])
def test_fused_stack_with_an_external_slot_equals_the_general_path(
    detectors: tuple[str, ...],
) -> None:
    """The LSTM's slot: a score set from outside each frame, calibrated from outside."""
    config = StackConfig(detectors=detectors, drift_block=10)
    xs = _faulty_stream()
    outside = RNG(21).exponential(size=len(xs))
    outside[1200:1210] += 40.0  # a fault only the outside score sees
    runs = []
    for fused in (True, False):
        stack = DetectorStack(config)
        stack.fused = fused
        j = stack.names.index("lstm")
        slot, calibrator = stack.detectors[j], stack.calibrators[j]
        for s in RNG(22).exponential(size=300):
            calibrator.add(s)
        steps = []
        for x, s in zip(xs, outside, strict=True):
            slot.set(s)
            step = stack.update(x)
            steps.append((step.index, step.surprise, step.change, step.onset, step.drift))
            steps.append(tuple(step.surprises))
            if not stack.alarm.active and step.index % 7 == 0:
                calibrator.add(s)
        runs.append((steps, stack._fused is not None))
    (fused_steps, was_fused), (plain_steps, plain_fused) = runs
    assert was_fused and not plain_fused
    assert fused_steps == plain_steps
    assert any(s[2] == "start" for s in fused_steps[::2] if s[0] >= 1200)
