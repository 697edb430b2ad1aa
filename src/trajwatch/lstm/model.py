"""A trained LSTM autoencoder with everything needed to use it: the model file.

:class:`LSTMModel` bundles the network, the scaler fitted on its training data, its
calibration (validation errors, threshold), the window length and the names of the
features it was trained on, in order. :meth:`LSTMModel.save` writes one ``torch.save``
file holding only plain data (dicts, lists, str, int, float, bool and tensors), which
:meth:`LSTMModel.load` reads with ``torch.load(weights_only=True)``: loading a model file
never runs code. The keys are listed in ``docs/lstm.md``.

>>> import numpy as np, tempfile, os
>>> from trajwatch.lstm.network import LSTMAutoencoder
>>> from trajwatch.lstm.scaler import Scaler, StreamScaling
>>> from trajwatch.lstm.calibration import Calibration
>>> model = LSTMModel(LSTMAutoencoder(2, hidden=4, latent=2),
...                   Scaler.fit(np.random.default_rng(0).normal(size=(20, 2))),
...                   Calibration.from_errors([1.0, 2.0, 3.0], np.ones((3, 2))),
...                   features=("a", "b"), window=5)
>>> path = model.save(os.path.join(tempfile.mkdtemp(), "m.pt"))
>>> LSTMModel.load(path).features
('a', 'b')
>>> model.feature_index(["b", "a"]).tolist()  # the stream's order may differ
[1, 0]
>>> try:
...     model.feature_index(["a", "c"])
... except FeatureMismatchError as error:
...     print(error)  # doctest: +ELLIPSIS
the LSTM model was trained on 2 features ... the stream lacks ['b'] and has extra ['c']; ...
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from trajwatch import __version__
from trajwatch.lstm.calibration import Calibration
from trajwatch.lstm.network import LSTMAutoencoder
from trajwatch.lstm.scaler import Scaler, StreamScaling

__all__ = [
    "DEFAULT_MODEL",
    "FORMAT",
    "FORMAT_VERSION",
    "FeatureMismatchError",
    "LSTMModel",
    "ModelFileError",
    "default_model_path",
]

FORMAT = "trajwatch-lstm-autoencoder"
FORMAT_VERSION = 1
DEFAULT_MODEL = "lstm_default.pt"
"""File name of the shipped weights in ``trajwatch/data``."""


class ModelFileError(ValueError):
    """The file is not a trajwatch LSTM model this version can read."""


class FeatureMismatchError(ValueError):
    """The stream's features are not the ones the model was trained on."""


def default_model_path() -> Path:
    """Where the shipped pre-trained weights live inside the installed package."""
    return Path(str(resources.files("trajwatch") / "data" / DEFAULT_MODEL))


@dataclass
class LSTMModel:
    """Network, scaler, calibration, window and feature names of one trained model."""

    network: LSTMAutoencoder
    scaler: Scaler
    calibration: Calibration
    features: tuple[str, ...]
    window: int
    info: dict[str, Any] = field(default_factory=dict)
    """How the model was made (plain data): seed, losses, epochs, training sources..."""
    stream_scaling: StreamScaling | None = None
    """None: standardise with ``scaler`` (fitted on the training data, reference mode).
    Else each stream is standardised by its own first frames (see :class:`StreamScaling`)."""

    def __post_init__(self) -> None:
        self.features = tuple(self.features)
        n = len(self.features)
        if len(set(self.features)) != n:
            raise ValueError("feature names must be unique")
        if self.network.n_features != n or self.scaler.n_features != n:
            raise ValueError(
                f"{n} feature names, but the network has {self.network.n_features} inputs "
                f"and the scaler {self.scaler.n_features}"
            )
        stream = self.stream_scaling
        if stream is not None and stream.floor.size != n:
            raise ValueError(f"stream scaling has {stream.floor.size} floors, not {n}")
        if self.window < 2:
            raise ValueError(f"window must be at least 2 frames, not {self.window}")
        self.network.eval()

    @property
    def scaling(self) -> str:
        """``"reference"`` (the training scaler) or ``"stream"`` (each stream's own)."""
        return "reference" if self.stream_scaling is None else "stream"

    @property
    def first_scored_frame(self) -> int:
        """Index of the first frame of a stream whose window gets a score."""
        frames = 0 if self.stream_scaling is None else self.stream_scaling.span
        return max(self.window, frames) - 1

    @property
    def threshold(self) -> float:
        """Window error above which the model calls a window anomalous."""
        return self.calibration.threshold

    def feature_index(self, stream_features: Sequence[str]) -> NDArray[np.intp]:
        """Positions in the stream's vector of the model's features, in the model's order.

        Raises :class:`FeatureMismatchError`, naming what is missing and what is extra, if
        the two sets of names differ.
        """
        stream = list(stream_features)
        missing = [f for f in self.features if f not in stream]
        extra = [f for f in stream if f not in self.features]
        if missing or extra or len(stream) != len(self.features):
            raise FeatureMismatchError(
                f"the LSTM model was trained on {len(self.features)} features that the "
                f"stream does not match: the stream lacks {missing} and has extra {extra}; "
                "train a model on this feature set (trajwatch train) or run without --model"
            )
        return np.array([stream.index(f) for f in self.features], dtype=np.intp)

    def to_dict(self) -> dict[str, Any]:
        """The model file's content: plain data and tensors only."""
        stream = self.stream_scaling
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "trajwatch_version": __version__,
            "features": list(self.features),
            "window": self.window,
            "network": self.network.config(),
            "state_dict": {k: v.detach().clone() for k, v in self.network.state_dict().items()},
            "scaler": self.scaler.to_dict(),
            "stream_scaling": None if stream is None else stream.to_dict(),
            "calibration": self.calibration.to_dict(),
            "info": dict(self.info),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LSTMModel:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ModelFileError("not a trajwatch LSTM model file (no 'format' key)")
        version = data.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ModelFileError(
                f"model file format {version!r} is newer than this trajwatch reads "
                f"({FORMAT_VERSION}); upgrade trajwatch"
            )
        try:
            stream = data.get("stream_scaling")
            network = LSTMAutoencoder(**{k: int(v) for k, v in data["network"].items()})
            network.load_state_dict(data["state_dict"])
            return cls(
                network=network,
                scaler=Scaler.from_dict(data["scaler"]),
                calibration=Calibration.from_dict(data["calibration"]),
                features=tuple(str(f) for f in data["features"]),
                window=int(data["window"]),
                info=dict(data.get("info", {})),
                stream_scaling=None if stream is None else StreamScaling.from_dict(stream),
            )
        except (KeyError, TypeError, RuntimeError) as error:
            raise ModelFileError(f"malformed LSTM model file: {error}") from error

    def save(self, path: str | Path) -> Path:
        """Write the model file (parent directories must exist); returns the path."""
        path = Path(path)
        torch.save(self.to_dict(), path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> LSTMModel:
        """Read a model file with ``torch.load(weights_only=True)`` (no code is run)."""
        path = Path(path)
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as error:  # torch raises UnpicklingError, RuntimeError, ...
            message = f"{path}: cannot be read as an LSTM model file: {error}"
            raise ModelFileError(message) from error
        try:
            return cls.from_dict(data)
        except ModelFileError as error:
            raise ModelFileError(f"{path}: {error}") from error

    @classmethod
    def load_default(cls) -> LSTMModel:
        """The pre-trained weights shipped with trajwatch (see ``docs/lstm.md``)."""
        path = default_model_path()
        if not path.is_file():
            raise ModelFileError(f"the shipped LSTM weights are missing ({path})")
        return cls.load(path)
