"""The LSTM autoencoder: network, scaler, calibration, model file, training and scoring.

Importing this package imports torch; the rest of trajwatch does not need it.
See ``docs/lstm.md``.
"""

from trajwatch.lstm.calibration import Calibration
from trajwatch.lstm.model import (
    FeatureMismatchError,
    LSTMModel,
    ModelFileError,
    default_model_path,
)
from trajwatch.lstm.network import LSTMAutoencoder
from trajwatch.lstm.scaler import Scaler
from trajwatch.lstm.scorer import WindowScorer, WindowScores
from trajwatch.lstm.training import EpochReport, TrainConfig, feature_matrix, train

__all__ = [
    "Calibration",
    "EpochReport",
    "FeatureMismatchError",
    "LSTMAutoencoder",
    "LSTMModel",
    "ModelFileError",
    "Scaler",
    "TrainConfig",
    "WindowScorer",
    "WindowScores",
    "default_model_path",
    "feature_matrix",
    "train",
]
