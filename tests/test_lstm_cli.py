"""``trajwatch train``: files in, a model file out, reproducibly."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from trajwatch.cli import main
from trajwatch.features.engine import FeatureEngine
from trajwatch.frame import Frame
from trajwatch.lstm import LSTMModel
from trajwatch.monitor.live import ingest
from trajwatch.monitor.state import MonitorState
from trajwatch.pipeline import Pipeline

TINY = ["--window", "20", "--hidden", "8", "--latent", "2", "--max-epochs", "3", "--quiet"]


def test_train_writes_a_model_for_this_feature_engine(clean_file: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "sub" / "model.pt"
    assert main(["train", str(clean_file), "-o", str(out), *TINY]) == 0
    model = LSTMModel.load(out)
    assert model.features == tuple(FeatureEngine().names)
    assert model.window == 20 and model.info["sources"] == [clean_file.name]
    assert model.info["epochs"] == 3 and model.scaling == "reference"
    again = tmp_path / "again.pt"
    assert main(["train", str(clean_file), "-o", str(again), *TINY]) == 0
    a, b = model.network.state_dict(), LSTMModel.load(again).network.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_with_stream_scaling(clean_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "stream.pt"
    options = [*TINY, "--scaling", "stream", "--scaling-frames", "60", "--seed", "3"]
    assert main(["train", str(clean_file), "-o", str(out), *options]) == 0
    model = LSTMModel.load(out)
    assert model.scaling == "stream" and model.first_scored_frame == 50 + 60 - 1
    assert model.info["config"]["seed"] == 3
    assert np.isfinite(model.threshold)


def test_train_refuses_a_run_too_short_to_validate(
    clean_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.pt"
    assert main(["train", str(clean_file), "-o", str(out), "--window", "200", "--quiet"]) == 1
    assert "at least 1000 frames" in capsys.readouterr().err
    assert not out.exists()


def test_train_reports_a_missing_file(tmp_path: Path) -> None:
    assert main(["train", str(tmp_path / "nope.xyz"), "-o", str(tmp_path / "m.pt")]) == 1


# -- scan and monitor with the LSTM in the fusion ---------------------------------------


def _events(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_scan_uses_the_shipped_lstm_by_default(
    clash_file: Path, clash_at: int, tmp_path: Path
) -> None:
    out = tmp_path / "events.jsonl"
    assert main(["scan", str(clash_file), "--events", str(out), "--quiet"]) == 0
    anomalies = [e for e in _events(out) if e["event"] == "anomaly"]
    assert len(anomalies) == 1 and anomalies[0]["frame"] == clash_at
    assert "lstm" in str(anomalies[0]["message"])
    off = tmp_path / "off.jsonl"
    assert main(["scan", str(clash_file), "--events", str(off), "--quiet", "--no-lstm"]) == 0
    assert [e["frame"] for e in _events(off)] == [e["frame"] for e in _events(out)]
    assert all("lstm" not in str(e["message"]) for e in _events(off))


def test_scan_with_a_trained_model(clean_file: Path, clash_file: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.pt"
    assert main(["train", str(clean_file), "-o", str(model), *TINY]) == 0
    out = tmp_path / "events.jsonl"
    options = ["--model", str(model), "--lstm-stride", "2", "--events", str(out), "--quiet"]
    assert main(["scan", str(clash_file), *options]) == 0
    assert any("lstm" in str(e["message"]) for e in _events(out) if e["event"] == "anomaly")


def test_a_model_of_other_features_is_refused_by_name(
    clash_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = LSTMModel.load_default()
    other = LSTMModel(model.network, model.scaler, model.calibration,
                      ("speed_of_light", *model.features[1:]), model.window)  # fmt: skip
    path = other.save(tmp_path / "other.pt")
    assert main(["scan", str(clash_file), "--model", str(path), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "speed_of_light" in err and model.features[0] in err
    assert main(["scan", str(clash_file), "--model", str(path), "--no-lstm", "--quiet"]) == 1


class _BatchSizes(Pipeline):
    """The real pipeline, noting how many frames each prefetch got."""

    sizes: list[int]

    def prefetch(self, frames: Sequence[Frame]) -> None:
        self.sizes = [*getattr(self, "sizes", []), len(frames)]
        super().prefetch(frames)


def test_the_monitor_loop_batches_queued_frames_with_the_same_events(
    clash_frames: list[Frame],
) -> None:
    model = LSTMModel.load_default()
    plain = Pipeline(lstm=model)
    expected = [e.to_dict() for f in clash_frames for e in plain.process(f)]
    queue = iter(clash_frames)  # everything already waiting: the loop takes 64 at a time
    batched = _BatchSizes(lstm=model)
    reason = ingest(lambda timeout: next(queue, None), batched, MonitorState(), idle_timeout=0.0)
    assert reason == "idle" and batched.sizes[:2] == [64, 64]
    assert sum(batched.sizes) == len(clash_frames)
    got = [e.to_dict() for e in batched.events]
    assert [(e["event"], e["frame"], e["detector"]) for e in got] == [
        (e["event"], e["frame"], e["detector"]) for e in expected
    ]
