"""The LSTM autoencoder: network, scaler, calibration, model file, training and scoring.

The names below are imported lazily: ``import trajwatch.lstm`` costs nothing, and torch is
imported by the first use of a name that needs it. See ``docs/lstm.md``.

>>> from trajwatch.lstm import TrainConfig
>>> TrainConfig().hidden
32
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trajwatch.lstm.calibration import Calibration
    from trajwatch.lstm.config import TrainConfig
    from trajwatch.lstm.model import (
        FeatureMismatchError,
        LSTMModel,
        ModelFileError,
        default_model_path,
    )
    from trajwatch.lstm.network import LSTMAutoencoder
    from trajwatch.lstm.scaler import Scaler, StreamScaling
    from trajwatch.lstm.scorer import WindowScorer, WindowScores, window_errors
    from trajwatch.lstm.training import EpochReport, feature_matrix, train

_HOME = {
    "Calibration": "calibration",
    "EpochReport": "training",
    "FeatureMismatchError": "model",
    "LSTMAutoencoder": "network",
    "LSTMModel": "model",
    "ModelFileError": "model",
    "Scaler": "scaler",
    "StreamScaling": "scaler",
    "TrainConfig": "config",
    "WindowScorer": "scorer",
    "WindowScores": "scorer",
    "default_model_path": "model",
    "feature_matrix": "training",
    "train": "training",
    "window_errors": "scorer",
}

__all__ = [
    "Calibration",
    "EpochReport",
    "FeatureMismatchError",
    "LSTMAutoencoder",
    "LSTMModel",
    "ModelFileError",
    "Scaler",
    "StreamScaling",
    "TrainConfig",
    "WindowScorer",
    "WindowScores",
    "default_model_path",
    "feature_matrix",
    "train",
    "window_errors",
]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'trajwatch.lstm' has no attribute {name!r}")
    return getattr(importlib.import_module(f"trajwatch.lstm.{_HOME[name]}"), name)
