"""The shared detector protocol, checked over every detector (River's check_estimator idea)."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trajwatch.detectors import state
from trajwatch.detectors.base import Detector
from trajwatch.detectors.hst import HalfSpaceTrees
from trajwatch.detectors.loda import LODA
from trajwatch.detectors.river_adapter import RiverDetector
from trajwatch.detectors.robust_zscore import RobustZScore
from trajwatch.detectors.zscore import ZScore


def _river_hst() -> RiverDetector:
    from river import anomaly

    return RiverDetector(anomaly.HalfSpaceTrees(n_trees=5, height=5, window_size=60, seed=3))


def _river_svm() -> RiverDetector:
    from river import anomaly

    return RiverDetector(anomaly.OneClassSVM(nu=0.1))


FACTORIES: dict[str, Callable[[], Any]] = {
    "zscore": ZScore,
    "robust": lambda: RobustZScore(window=64),
    "hst": lambda: HalfSpaceTrees(n_trees=10, height=6, window=64, seed=1),
    "loda": lambda: LODA(n_projections=20, window=64, seed=1),
    "river-hst": _river_hst,
    "river-svm": _river_svm,
}

D = 6


def _normal(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(10.0, 2.0, size=(n, D))


def _trained(name: str, n: int = 300) -> Any:
    det = FACTORIES[name]()
    for x in _normal(n):
        det.learn_one(x)
    return det


@pytest.fixture(params=sorted(FACTORIES))
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_follows_the_protocol_and_documents_itself(name: str) -> None:
    det = FACTORIES[name]()
    assert isinstance(det, Detector)
    assert hasattr(det, "get_state") and hasattr(type(det), "from_state")
    module = importlib.import_module(type(det).__module__)
    assert module.__doc__ and ">>>" in module.__doc__, (
        "each detector module has a runnable example"
    )


def test_scores_are_finite_floats_before_and_after_learning(name: str) -> None:
    det = FACTORIES[name]()
    first = det.score_one(_normal(1)[0])
    assert isinstance(first, float) and math.isfinite(first)
    det = _trained(name)
    scores = [det.score_one(x) for x in _normal(50, seed=1)]
    assert all(isinstance(s, float) and math.isfinite(s) for s in scores)


def test_outliers_score_higher_than_normal_frames(name: str) -> None:
    if name == "river-svm":
        pytest.skip("River's OneClassSVM is linear: it only sees outliers on one side")
    det = _trained(name)
    normal = np.median([det.score_one(x) for x in _normal(100, seed=1)])
    outlier = np.full(D, 10.0)
    outlier[[1, 4]] = [40.0, -20.0]
    assert det.score_one(outlier) > normal


def test_score_one_does_not_learn(name: str) -> None:
    det = _trained(name)
    probe = _normal(1, seed=9)[0] + 5.0
    before = det.score_one(probe)
    for _ in range(5):
        det.score_one(probe)
    assert det.score_one(probe) == before


def test_nan_entries_never_give_a_nan_score(name: str) -> None:
    det = FACTORIES[name]()
    xs = _normal(200)
    xs[::7, 2] = np.nan  # a feature that is sometimes unavailable
    for x in xs:
        det.learn_one(x)
        assert not math.isnan(det.score_one(x))


def test_same_seed_same_scores(name: str) -> None:
    a, b = _trained(name), _trained(name)
    for x in _normal(20, seed=2):
        assert a.score_one(x) == b.score_one(x)


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_state_round_trip_gives_the_same_scores(name: str, suffix: str, tmp_path: Path) -> None:
    det = _trained(name)
    again = state.load(state.save(det, tmp_path / f"det{suffix}"))
    assert type(again) is type(det)
    probes = _normal(20, seed=3)
    probes[0, 1] = 50.0
    np.testing.assert_allclose(
        [again.score_one(x) for x in probes], [det.score_one(x) for x in probes], rtol=1e-12
    )
    # and both go on learning identically
    for x in _normal(40, seed=4):
        det.learn_one(x)
        again.learn_one(x)
    np.testing.assert_allclose(
        [again.score_one(x) for x in probes], [det.score_one(x) for x in probes], rtol=1e-9
    )


def test_state_files_are_never_pickles(name: str, tmp_path: Path) -> None:
    path = state.save(_trained(name), tmp_path / "det.npz")
    with np.load(path, allow_pickle=False) as data:  # would raise on object arrays
        assert "__state__" in data.files


@pytest.mark.parametrize("cls", [HalfSpaceTrees, LODA])
def test_window_swap_reuses_the_same_arrays(cls: type) -> None:
    det = cls(window=16, seed=0)
    det.learn_one(np.zeros(D))
    arrays = {k: id(v) for k, v in vars(det).items() if isinstance(v, np.ndarray)}
    for x in _normal(100):
        det.learn_one(x)
    assert det.state[3] >= 5  # several swaps happened
    assert {k: id(v) for k, v in vars(det).items() if isinstance(v, np.ndarray)} == arrays


def test_zscore_flags_a_feature_that_turns_nan() -> None:
    det = _trained("zscore")
    x = _normal(1)[0]
    x[3] = np.nan
    assert det.score_one(x) == math.inf
    assert np.isinf(det.deviations(x)[3])


def test_robust_zscore_is_not_dragged_by_outliers_it_learned() -> None:
    robust, plain = RobustZScore(window=101), ZScore()
    xs = _normal(300)
    xs[::10, 0] = 1e4  # gross outliers that slipped into the training data
    for x in xs:
        robust.learn_one(x)
        plain.learn_one(x)
    probe = np.full(D, 10.0)
    probe[0] = 25.0  # 7.5 sd for the clean data
    assert robust.score_one(probe) > 5.0
    assert plain.score_one(probe) < 1.0


def test_load_refuses_unknown_types_and_non_river_classes(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"format": "trajwatch-state/1", "state": {"type": "os.system"}}')
    with pytest.raises(ValueError, match="unknown state type"):
        state.load(path)
    path.write_text(
        '{"format": "trajwatch-state/1", "state": {"type": "RiverDetector", '
        '"params": {"names": null, "squash": false, "replay": 1}, '
        '"model": {"class": "os.path.join", "params": {}}, "memory": []}}'
    )
    with pytest.raises(ValueError, match="only River classes"):
        state.load(path)


def test_tail_scale_loads_a_state_that_kept_the_whole_window_sorted() -> None:
    from trajwatch.detectors.tailscale import TailScale

    ts = TailScale(window=40, min_n=5)
    for z in np.random.default_rng(3).normal(size=(70, 3)):
        ts.learn(z)
    legacy = ts.get_state()
    del legacy["top"]
    n = ts.meta[:, 0].astype(int)
    legacy["sorted"] = np.array([np.sort(ts.ring[k, : n[k]]) for k in range(3)])
    again = TailScale.from_state(legacy)
    np.testing.assert_array_equal(again.top, ts.top)
    probe = np.array([3.0, -4.0, 9.0])
    assert again.scaled_max(probe) == ts.scaled_max(probe)
