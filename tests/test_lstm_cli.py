"""``trajwatch train``: files in, a model file out, reproducibly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from trajwatch.cli import main
from trajwatch.features.engine import FeatureEngine
from trajwatch.lstm import LSTMModel

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
