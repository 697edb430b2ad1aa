"""The LSTM autoencoder inside the pipeline: one more detector in the fusion, batched."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from trajwatch.checkpoint import load_checkpoint, restore_checkpoint, save_checkpoint
from trajwatch.events import Event
from trajwatch.features.engine import FeatureEngine
from trajwatch.frame import Frame
from trajwatch.lstm import FeatureMismatchError, LSTMModel, TrainConfig, feature_matrix, train
from trajwatch.pipeline import Pipeline, PipelineConfig, fit_reference, run

SMALL = TrainConfig(window=20, hidden=12, latent=4, max_epochs=12, patience=4, seed=7)


@pytest.fixture(scope="module")
def model(clean_frames: list[Frame]) -> LSTMModel:
    torch.set_num_threads(1)
    return train([feature_matrix(clean_frames)], FeatureEngine().names, SMALL)


def _drop_last_atom(f: Frame) -> Frame:
    velocities = None if f.velocities is None else f.velocities[:-1]
    return Frame(f.positions[:-1], f.numbers[:-1], velocities=velocities, cell=f.cell,
                 energy=f.energy, step=f.step, time=f.time, source=f.source)  # fmt: skip


def _key(e: Event) -> tuple[object, ...]:
    return (e.event, e.frame, e.source, e.detector, e.severity, e.onset_frame, tuple(e.atoms))


def test_the_lstm_joins_the_fusion_and_the_clean_run_stays_quiet(
    model: LSTMModel, clean_frames: list[Frame]
) -> None:
    pipeline = Pipeline(lstm=model)
    assert run(clean_frames, pipeline).events == []
    watch = pipeline.sources["clean"]
    assert watch.stack.names[-1] == "lstm" and watch.lstm is not None and watch.lstm.ready


def test_the_clash_is_caught_with_the_lstm_on(
    model: LSTMModel, clash_frames: list[Frame], clash_at: int
) -> None:
    anomalies = [e for e in run(clash_frames, Pipeline(lstm=model)).events if e.event == "anomaly"]
    assert anomalies and clash_at <= anomalies[0].frame <= clash_at + 2
    assert "lstm" in anomalies[0].message


def test_the_lstm_alone_catches_the_clash_and_explains_it(
    model: LSTMModel, clash_frames: list[Frame], clash_at: int
) -> None:
    config = PipelineConfig(detectors=("lstm",), drift=False)
    events = run(clash_frames, Pipeline(config, lstm=model)).events
    anomalies = [e for e in events if e.event == "anomaly"]
    assert anomalies and clash_at <= anomalies[0].frame <= clash_at + 2, events
    assert anomalies[0].detector.endswith(":lstm")
    assert "lstm worst reconstructed:" in anomalies[0].message


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_prefetched_batches_give_the_same_events(
    model: LSTMModel, clash_frames: list[Frame], clean_frames: list[Frame], chunk: int
) -> None:
    # Two sources interleaved, as from a proxy, handed over in chunks as they queue up.
    frames = [f for pair in zip(clean_frames, clash_frames, strict=True) for f in pair]
    plain = Pipeline(lstm=model)
    expected = [e for f in frames for e in plain.process(f)]
    batched = Pipeline(lstm=model)
    got: list[Event] = []
    scores = []
    for lo in range(0, len(frames), chunk):
        batch = frames[lo : lo + chunk]
        batched.prefetch(batch)
        for frame in batch:
            got += batched.process(frame)
            scores.append(batched.sources[frame.source].last_score)
    assert [_key(e) for e in got] == [_key(e) for e in expected]
    assert [e.score for e in got] == pytest.approx([e.score for e in expected], rel=1e-4)
    for source in ("clean", "clash"):
        a, b = plain.sources[source].stack, batched.sources[source].stack
        assert a.calibrators[-1].n == b.calibrators[-1].n  # the LSTM's: the same frames
    lstm = batched.sources["clash"].lstm
    assert lstm is not None and plain.sources["clash"].lstm is not None
    assert lstm.last_score == pytest.approx(plain.sources["clash"].lstm.last_score, rel=1e-5)
    assert all(math.isfinite(s) for s in scores)


def test_prefetched_frames_must_be_processed_in_order(
    model: LSTMModel, clean_frames: list[Frame]
) -> None:
    pipeline = Pipeline(lstm=model)
    pipeline.prefetch(clean_frames[:3])
    with pytest.raises(RuntimeError, match="in order"):
        pipeline.process(clean_frames[1])


def test_a_structure_change_inside_a_batch_restarts_the_lstm(
    model: LSTMModel, clean_frames: list[Frame]
) -> None:
    frames = clean_frames[:100] + [_drop_last_atom(f) for f in clean_frames[100:]]
    plain = Pipeline(lstm=model)
    expected = [_key(e) for f in frames for e in plain.process(f)]
    batched = Pipeline(lstm=model)
    got = []
    for lo in range(0, len(frames), 32):
        batch = frames[lo : lo + 32]
        batched.prefetch(batch)
        got += [_key(e) for f in batch for e in batched.process(f)]
    assert got == expected and expected[0][:3] == ("anomaly", 100, "clean")
    assert expected[0][3] == "structure"


def test_a_model_of_other_features_is_refused_up_front(model: LSTMModel) -> None:
    other = LSTMModel(
        model.network, model.scaler, model.calibration,
        ("renamed", *model.features[1:]), model.window,
    )  # fmt: skip
    with pytest.raises(FeatureMismatchError, match="renamed"):
        Pipeline(lstm=other)


def test_reference_mode_with_the_lstm(
    model: LSTMModel, clean_frames: list[Frame], clash_frames: list[Frame], clash_at: int
) -> None:
    reference = fit_reference(clean_frames, lstm=model)
    assert "lstm" in reference.names
    events = run(clash_frames, Pipeline(reference=reference, lstm=model)).events
    assert [e.frame for e in events if e.event == "anomaly"][:1] == [clash_at]
    with pytest.raises(ValueError, match="has an LSTM slot"):
        run(clash_frames[:1], Pipeline(reference=reference))
    plain = fit_reference(clean_frames)
    with pytest.raises(ValueError, match="has no LSTM slot"):
        run(clash_frames[:1], Pipeline(reference=plain, lstm=model))


def test_the_config_switches_the_shipped_model_on() -> None:
    config = replace(PipelineConfig(), lstm=True, lstm_stride=2)
    pipeline = Pipeline(config)
    assert pipeline.lstm is not None and pipeline.batches
    assert pipeline.lstm.features == tuple(FeatureEngine().names)
    assert not Pipeline().batches and Pipeline().lstm is None


def test_the_stride_holds_the_score_between_windows(
    model: LSTMModel, clean_frames: list[Frame]
) -> None:
    pipeline = Pipeline(replace(PipelineConfig(), lstm_stride=5), lstm=model)
    run(clean_frames[:60], pipeline)
    lstm = pipeline.sources["clean"].lstm
    assert lstm is not None and lstm.stride == 5
    assert np.isfinite(lstm.last_score) and lstm.ready


def test_a_checkpoint_restores_the_lstm_slot(
    model: LSTMModel, clean_frames: list[Frame], clash_frames: list[Frame], tmp_path: Path
) -> None:
    before = Pipeline(lstm=model)
    run([replace_source(f, "run") for f in clean_frames], before)
    path = save_checkpoint(before, tmp_path / "state.npz")
    after = Pipeline(lstm=model)
    assert restore_checkpoint(after, load_checkpoint(path)) == ["run"]
    watch = after.sources["run"]
    assert watch.stack.names[-1] == "lstm"
    run([replace_source(f, "run") for f in clash_frames[:60]], after)
    assert watch.lstm is not None and watch.lstm.ready
    slot = watch.stack.detectors[-1]
    assert slot.score_one(np.zeros(1)) == watch.lstm.last_score


def replace_source(f: Frame, source: str) -> Frame:
    return Frame(f.positions, f.numbers, velocities=f.velocities, forces=f.forces,
                 energy=f.energy, cell=f.cell, pbc=f.pbc, step=f.step, time=f.time,
                 source=source)  # fmt: skip


def test_the_lstm_calibrates_on_the_model_and_the_sources_first_frames(
    model: LSTMModel, clean_frames: list[Frame]
) -> None:
    config = replace(PipelineConfig(), lstm_calibration=30)
    pipeline = Pipeline(config, lstm=model)
    run(clean_frames, pipeline)
    watch = pipeline.sources["clean"]
    calibrator = watch.stack.calibrators[watch.stack.names.index("lstm")]
    seeded = min(model.calibration.errors.size, calibrator.size)
    # the model's validation errors, then the first 30 scored frames, then nothing more
    assert calibrator.n == seeded + 30
    assert watch.lstm is not None and watch.lstm.scored_frames == len(clean_frames) - 19
