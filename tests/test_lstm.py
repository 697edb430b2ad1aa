"""The LSTM autoencoder on real EMT MD: training, the model file, streaming scores."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from trajwatch.detectors.base import Detector, Explainer
from trajwatch.detectors.hysteresis import Hysteresis
from trajwatch.detectors.lstm import LSTMDetector
from trajwatch.features.engine import FeatureEngine
from trajwatch.frame import Frame
from trajwatch.lstm import (
    FeatureMismatchError,
    LSTMModel,
    ModelFileError,
    TrainConfig,
    WindowScorer,
    default_model_path,
    feature_matrix,
    train,
)
from trajwatch.lstm.calibration import Calibration
from trajwatch.simulate import MDSpec, run_md

# Small and quick: a few seconds of training on one core.
SMALL = TrainConfig(
    window=20, hidden=16, latent=6, max_epochs=30, patience=6, learning_rate=5e-3, seed=7
)
TINY = TrainConfig(window=20, hidden=8, latent=2, max_epochs=3, seed=7)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def names() -> tuple[str, ...]:
    return tuple(FeatureEngine().names)


@pytest.fixture(scope="module")
def clean_x(clean_frames: list[Frame]) -> np.ndarray:
    return feature_matrix(clean_frames)


@pytest.fixture(scope="module")
def clash_x(clash_frames: list[Frame]) -> np.ndarray:
    return feature_matrix(clash_frames)


@pytest.fixture(scope="module")
def model(clean_x: np.ndarray, names: tuple[str, ...]) -> LSTMModel:
    return train([clean_x], names, SMALL)


def test_training_lowers_the_validation_loss(model: LSTMModel) -> None:
    info = model.info
    # MD fluctuations are mostly noise an autoencoder cannot (and should not) reproduce.
    assert info["best_val_loss"] < 0.8 * info["initial_val_loss"]
    assert 1 <= info["best_epoch"] <= info["epochs"] <= SMALL.max_epochs
    assert len(info["history"]) == info["epochs"]
    assert info["val_windows"] > 0 and info["train_windows"] > info["val_windows"]


def test_training_is_reproducible_with_the_same_seed(
    clean_x: np.ndarray, names: tuple[str, ...]
) -> None:
    first, again = train([clean_x], names, TINY), train([clean_x], names, TINY)
    for key, value in first.network.state_dict().items():
        assert torch.equal(value, again.network.state_dict()[key]), key
    assert first.threshold == again.threshold
    assert first.info["history"] == again.info["history"]
    other = train([clean_x], names, replace(TINY, seed=8))
    weights = other.network.state_dict()["readout.weight"]
    assert not torch.equal(first.network.state_dict()["readout.weight"], weights)


def test_training_does_not_touch_the_global_random_state(
    clean_x: np.ndarray, names: tuple[str, ...]
) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train([clean_x], names, replace(TINY, max_epochs=1))
    assert torch.equal(torch.rand(3), expected)


def test_too_short_runs_are_refused_with_the_needed_length(names: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="at least 250 frames"):
        train([np.zeros((100, len(names)))], names, TrainConfig())


def test_save_and_load_give_identical_scores(
    model: LSTMModel, clash_x: np.ndarray, tmp_path: Path
) -> None:
    path = model.save(tmp_path / "model.pt")
    loaded = LSTMModel.load(path)
    before = WindowScorer(model).push(clash_x)
    after = WindowScorer(loaded).push(clash_x)
    assert np.array_equal(before.scores, after.scores, equal_nan=True)
    assert np.array_equal(before.feature_errors, after.feature_errors, equal_nan=True)
    assert loaded.features == model.features and loaded.window == model.window
    assert loaded.threshold == model.threshold
    assert loaded.info == model.info


def test_the_model_file_is_plain_data(model: LSTMModel, tmp_path: Path) -> None:
    data = torch.load(model.save(tmp_path / "m.pt"), weights_only=True)
    assert data["format"] == "trajwatch-lstm-autoencoder" and data["format_version"] == 1
    assert data["features"] == list(model.features) and data["window"] == SMALL.window
    assert data["trajwatch_version"]
    assert set(data["scaler"]) == {"mean", "scale", "available", "clip"}
    assert data["calibration"]["threshold"] == model.threshold
    assert all(isinstance(v, torch.Tensor) for v in data["state_dict"].values())


class _Payload:
    """Anything that is not plain data: weights_only loading must refuse it."""


def test_files_that_are_not_plain_data_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": "trajwatch-lstm-autoencoder", "x": _Payload()}, path)
    with pytest.raises(ModelFileError, match="cannot be read"):
        LSTMModel.load(path)
    torch.save({"format": "something else"}, path)
    with pytest.raises(ModelFileError, match="not a trajwatch LSTM model"):
        LSTMModel.load(path)


def test_a_newer_format_is_refused(model: LSTMModel, tmp_path: Path) -> None:
    data = model.to_dict()
    data["format_version"] = 99
    torch.save(data, tmp_path / "new.pt")
    with pytest.raises(ModelFileError, match="newer"):
        LSTMModel.load(tmp_path / "new.pt")


def test_a_stream_with_other_features_is_refused_by_name(model: LSTMModel) -> None:
    stream = [*model.features[1:], "extra_feature"]
    with pytest.raises(FeatureMismatchError) as info:
        LSTMDetector(model, features=stream)
    message = str(info.value)
    assert repr([model.features[0]]) in message and "'extra_feature'" in message


def test_a_reordered_stream_gives_the_same_scores(model: LSTMModel, clash_x: np.ndarray) -> None:
    order = np.arange(clash_x.shape[1])[::-1]
    reordered = LSTMDetector(model, features=[model.features[k] for k in order])
    plain = LSTMDetector(model)
    assert np.array_equal(reordered.score_many(clash_x[:, order]), plain.score_many(clash_x))
    assert np.array_equal(reordered.deviations()[::-1], plain.deviations(), equal_nan=True)


def test_batched_scores_equal_frame_by_frame_scores(model: LSTMModel, clash_x: np.ndarray) -> None:
    batched = LSTMDetector(model, max_batch=64).score_many(clash_x)
    single = LSTMDetector(model)
    one_by_one = np.array([single.score_one(x) for x in clash_x])
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-5, atol=1e-7)
    # and in uneven chunks, as frames arrive when a consumer catches up
    chunked = LSTMDetector(model, max_batch=7)
    parts = [chunked.score_many(clash_x[a:b]) for a, b in [(0, 3), (3, 40), (40, 41), (41, 300)]]
    np.testing.assert_allclose(np.concatenate(parts), one_by_one, rtol=1e-5, atol=1e-7)


def test_no_score_before_the_first_full_window_and_stride_holds(
    model: LSTMModel, clean_x: np.ndarray
) -> None:
    w = model.window
    out = WindowScorer(model, stride=4).push(clean_x[:60])
    assert np.flatnonzero(out.scored).tolist() == list(range(w - 1, 60, 4))
    det = LSTMDetector(model, stride=4)
    scores = det.score_many(clean_x[:60])
    assert (scores[: w - 1] == 0).all() and det.ready
    assert scores[w] == scores[w - 1] and scores[w + 3] != scores[w - 1]


def test_the_clash_is_the_worst_reconstructed_window(
    model: LSTMModel, clash_x: np.ndarray, clash_at: int
) -> None:
    det = LSTMDetector(model)
    scores = det.score_many(clash_x)
    assert scores[:clash_at].max() < model.threshold * 5 < scores[clash_at]
    smallest = 1 / (model.calibration.n_windows + 1)
    assert det.p_value(scores[clash_at]) == pytest.approx(smallest)
    assert det.p_value(float(np.median(scores[60:clash_at]))) > 0.1
    explained = [name for name, _ in LSTMDetector(model).explain()]
    assert explained == []  # nothing scored yet
    det = LSTMDetector(model)
    det.score_many(clash_x[: clash_at + 1])
    top = [name for name, _ in det.explain(top=3)]
    assert any("disp" in name or "dist" in name for name in top), top


def test_unavailable_features_are_masked_not_fatal(model: LSTMModel, clean_x: np.ndarray) -> None:
    no_energy = clean_x.copy()
    no_energy[:, model.features.index("energy_per_atom")] = np.nan
    det = LSTMDetector(model)
    scores = det.score_many(no_energy)
    assert np.isfinite(scores).all() and scores.max() < 5 * model.threshold
    assert np.isnan(det.deviations()[model.features.index("energy_per_atom")])
    nothing = LSTMDetector(model).score_many(np.full((30, len(model.features)), np.nan))
    assert (nothing == 0).all()  # a window with nothing available is no evidence


def test_non_finite_values_are_extreme_not_nan(model: LSTMModel, clean_x: np.ndarray) -> None:
    broken = clean_x.copy()
    broken[100:, model.features.index("disp_max")] = np.inf
    scores = LSTMDetector(model).score_many(broken)
    assert np.isfinite(scores).all() and scores[100] > 100 * model.threshold


def test_the_detector_follows_the_protocol(model: LSTMModel, clean_x: np.ndarray) -> None:
    det = LSTMDetector(model)
    assert isinstance(det, Detector) and isinstance(det, Explainer)
    for x in clean_x[:30]:
        det.learn_one(x)  # reference mode: learns nothing, and does not advance the window
        assert det.score_one(x) >= 0.0
    assert det.ready


def test_conformal_p_values_and_threshold() -> None:
    errors = np.random.default_rng(0).exponential(size=999)
    cal = Calibration.from_errors(errors, np.ones((999, 2)), alpha=0.01, max_points=100)
    assert cal.n_windows == 999 and cal.errors.size == 100
    # p-values of fresh draws from the same distribution are close to uniform
    fresh = np.random.default_rng(1).exponential(size=20000)
    p = cal.p_values(fresh)
    assert abs((p <= 0.1).mean() - 0.1) < 0.02 and abs((p <= 0.5).mean() - 0.5) < 0.03
    assert abs((fresh > cal.threshold).mean() - 0.01) < 0.005
    assert cal.p_value(np.inf) == pytest.approx(1 / 1000) and cal.p_value(np.nan) == 1.0
    again = Calibration.from_dict(cal.to_dict())
    assert np.array_equal(again.errors, cal.errors) and again.threshold == cal.threshold
    assert again.n_windows == cal.n_windows and np.array_equal(
        again.feature_errors, cal.feature_errors
    )


# -- stream scaling: each run standardised by its own first frames ------------------------


@pytest.fixture(scope="module")
def stream_model(clean_x: np.ndarray, names: tuple[str, ...]) -> LSTMModel:
    config = replace(SMALL, scaling="stream", scaling_skip=10, scaling_frames=40, max_epochs=10)
    return train([clean_x], names, config)


def test_stream_scaling_waits_for_its_frames(stream_model: LSTMModel, clash_x: np.ndarray) -> None:
    assert stream_model.scaling == "stream" and stream_model.first_scored_frame == 49
    scorer = WindowScorer(stream_model)
    assert scorer.scaler is None
    out = scorer.push(clash_x[:100])
    assert np.flatnonzero(out.scored).tolist() == list(range(49, 100))
    assert scorer.scaler is not None
    np.testing.assert_allclose(scorer.scaler.mean, np.nanmean(clash_x[10:50], axis=0), rtol=1e-9)
    single = WindowScorer(stream_model)
    one_by_one = np.concatenate([single.push(x).scores for x in clash_x[:100]])
    np.testing.assert_allclose(out.scores, one_by_one, rtol=1e-5, equal_nan=True)


def test_stream_scaled_scores_do_not_depend_on_feature_levels(
    stream_model: LSTMModel, clean_x: np.ndarray
) -> None:
    # Another system: every feature sits elsewhere (another lattice, another energy zero).
    offset = 5.0 * np.nanstd(clean_x, axis=0)
    base = LSTMDetector(stream_model).score_many(clean_x)
    moved = LSTMDetector(stream_model).score_many(clean_x + offset)
    np.testing.assert_allclose(moved, base, rtol=1e-3, atol=1e-6)
    reference = LSTMDetector(train([clean_x], stream_model.features, TINY))
    assert reference.score_many(clean_x + offset)[100:].min() > 10 * reference.threshold


def test_stream_scaled_model_round_trips(
    stream_model: LSTMModel, clash_x: np.ndarray, tmp_path: Path
) -> None:
    loaded = LSTMModel.load(stream_model.save(tmp_path / "stream.pt"))
    assert loaded.stream_scaling is not None and stream_model.stream_scaling is not None
    assert np.array_equal(loaded.stream_scaling.floor, stream_model.stream_scaling.floor)
    a = LSTMDetector(stream_model).score_many(clash_x)
    b = LSTMDetector(loaded).score_many(clash_x)
    assert np.array_equal(a, b)


# -- the shipped weights ---------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> LSTMModel:
    return LSTMModel.load_default()


@pytest.fixture(scope="module")
def platinum() -> dict[str, np.ndarray]:
    """Pt was held out of the shipped model's training: a system it has never seen."""
    clean = MDSpec(element="Pt", repeat=2, temperature=300.0, steps=260, seed=41)
    clash = MDSpec(element="Pt", repeat=2, temperature=300.0, steps=260, seed=42,
                   fault="clash", fault_frame=PT_CLASH)  # fmt: skip
    return {"clean": feature_matrix(run_md(clean)), "clash": feature_matrix(run_md(clash))}


PT_CLASH = 180


def _alarms(detector: LSTMDetector, X: np.ndarray) -> list[tuple[str, int]]:
    threshold = detector.threshold
    alarm = Hysteresis(threshold, 0.5 * threshold, release_frames=10)
    changes = [alarm.update(s) for s in detector.score_many(X)]
    return [(c, i) for i, c in enumerate(changes) if c is not None]


def test_shipped_weights_match_the_feature_engine(shipped: LSTMModel) -> None:
    assert shipped.features == tuple(FeatureEngine().names)
    assert default_model_path().stat().st_size < 5 * 2**20
    assert shipped.scaling == "stream" and "Pt" not in " ".join(shipped.info["sources"])


def test_shipped_model_catches_a_clash_in_a_metal_it_never_saw(
    shipped: LSTMModel, platinum: dict[str, np.ndarray]
) -> None:
    alarms = _alarms(LSTMDetector(), platinum["clash"])
    assert alarms and alarms[0][0] == "start"
    assert PT_CLASH <= alarms[0][1] <= PT_CLASH + 2


def test_shipped_model_is_quiet_on_a_clean_run_of_it(
    shipped: LSTMModel, platinum: dict[str, np.ndarray]
) -> None:
    detector = LSTMDetector(shipped)
    assert _alarms(detector, platinum["clean"]) == []
    assert detector.ready
