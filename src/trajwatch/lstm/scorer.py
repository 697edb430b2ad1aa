"""Streaming inference: score the window ending at each frame, in batches when frames queue.

:class:`WindowScorer` keeps the last ``window - 1`` standardised feature vectors of one
stream. :meth:`WindowScorer.push` takes one or many new vectors (rows, in stream order)
and scores every window that ends on one of them, every ``stride`` frames, in batches of
up to ``max_batch`` windows per forward pass. Handing it the frames that queued up since
the last call (instead of one call per frame) is what lets a slow consumer catch up: the
results are the same either way. Inference runs under ``torch.inference_mode`` (no
gradient tracking); the scorer sets ``torch.set_num_threads(threads)`` (1 by default)
because small batches only lose to thread hand-offs.

>>> import numpy as np
>>> from trajwatch.lstm.training import TrainConfig, train
>>> X = np.random.default_rng(0).normal(size=(120, 3))
>>> model = train([X], ["a", "b", "c"], TrainConfig(window=10, hidden=8, latent=2,
...                                                 max_epochs=2, val_fraction=0.3))
>>> scorer = WindowScorer(model, stride=5)
>>> out = scorer.push(X[:23])           # windows end at frames 9, 14 and 19
>>> np.flatnonzero(out.scored).tolist(), out.feature_errors.shape
([9, 14, 19], (23, 3))
>>> again = WindowScorer(model, stride=5)
>>> one_by_one = np.concatenate([again.push(row).scores for row in X[:23]])
>>> bool(np.allclose(out.scores, one_by_one, equal_nan=True))
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from trajwatch.lstm.model import LSTMModel
from trajwatch.lstm.network import masked_errors
from trajwatch.lstm.scaler import Scaler

__all__ = ["WindowScorer", "WindowScores"]


@dataclass(frozen=True)
class WindowScores:
    """Results for the rows handed to one :meth:`WindowScorer.push`, one row per frame."""

    scored: NDArray[np.bool_]
    """True where a window ended on this frame and was scored."""
    scores: NDArray[np.float64]
    """Window reconstruction error (mean squared, standardised units); NaN if not scored."""
    feature_errors: NDArray[np.float64]
    """(frames, features): each feature's mean squared error over the window."""
    residuals: NDArray[np.float64]
    """(frames, features): each feature's mean signed error (input - reconstruction)."""


class WindowScorer:
    """Sliding-window LSTM-autoencoder scores over one stream of feature vectors.

    ``stream_features`` are the names of the stream's vector entries (``engine.names``);
    the model refuses them if they do not match its own (:class:`FeatureMismatchError`).
    """

    def __init__(
        self,
        model: LSTMModel,
        *,
        stride: int = 1,
        max_batch: int = 256,
        stream_features: Sequence[str] | None = None,
        threads: int | None = 1,
    ) -> None:
        if stride < 1 or max_batch < 1:
            raise ValueError("stride and max_batch must be at least 1")
        self.model = model
        self.stride = stride
        self.max_batch = max_batch
        features = model.features if stream_features is None else stream_features
        index = model.feature_index(features)
        self._index: NDArray[np.intp] | None = (
            None if np.array_equal(index, np.arange(index.size)) else index
        )
        if threads is not None:
            torch.set_num_threads(threads)
        n = len(model.features)
        self._keep = model.window - 1
        self._z = np.zeros((0, n), dtype=np.float32)
        self._mask = np.zeros((0, n), dtype=np.bool_)
        self._pending = np.zeros((0, n))
        self.scaler: Scaler | None = model.scaler if model.stream_scaling is None else None
        """The standardisation in use (None until a stream-scaled model has seen enough)."""
        self.frames = 0
        """Vectors pushed so far."""
        self.windows = 0
        """Windows scored so far."""

    @property
    def window(self) -> int:
        return self.model.window

    def reset(self) -> None:
        """Forget the history (the next score comes ``window`` frames later)."""
        self._z = self._z[:0]
        self._mask = self._mask[:0]
        self._pending = self._pending[:0]
        if self.model.stream_scaling is not None:
            self.scaler = None
        self.frames = 0

    def push(self, X: NDArray[np.float64]) -> WindowScores:
        """Append ``X`` (frames, features) and score the windows that end on its rows."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1:
            X = X[None, :]
        if self._index is not None:
            X = X[:, self._index]
        n_rows, n_features = X.shape
        if n_features != self._z.shape[1]:
            raise ValueError(f"expected {self._z.shape[1]} features per frame, got {n_features}")
        first = self.frames
        self.frames += n_rows
        if self.scaler is None:  # stream scaling: wait for the stream's first frames
            policy = self.model.stream_scaling
            assert policy is not None
            self._pending = np.concatenate([self._pending, X])
            if self._pending.shape[0] < policy.frames:
                return _nothing(n_rows, n_features)
            self.scaler = policy.fit(self._pending[: policy.frames], self.model.scaler)
            X, self._pending = self._pending, self._pending[:0]
        z, mask = self.scaler.transform(X)
        z_seq = np.concatenate([self._z, z])
        mask_seq = np.concatenate([self._mask, mask])
        offset = self.frames - z_seq.shape[0]  # stream index of z_seq[0]
        self._z = z_seq[-self._keep :].copy() if self._keep else z_seq[:0]
        self._mask = mask_seq[-self._keep :].copy() if self._keep else mask_seq[:0]

        w = self.window
        ends = np.arange(max(first, self.model.first_scored_frame), self.frames)
        ends = ends[(ends - (w - 1)) % self.stride == 0]
        scores = np.full(n_rows, np.nan)
        feature_errors = np.full((n_rows, n_features), np.nan)
        residuals = np.full((n_rows, n_features), np.nan)
        scored = np.zeros(n_rows, dtype=np.bool_)
        if ends.size:
            starts = torch.from_numpy(ends - offset - (w - 1))
            z_windows = torch.from_numpy(z_seq).unfold(0, w, 1).transpose(1, 2)
            m_windows = torch.from_numpy(mask_seq).unfold(0, w, 1).transpose(1, 2)
            rows = ends - first
            for lo in range(0, ends.size, self.max_batch):
                pick = starts[lo : lo + self.max_batch]
                s, fe, r = self._score(z_windows[pick], m_windows[pick])
                at = rows[lo : lo + self.max_batch]
                scores[at] = s
                feature_errors[at] = fe
                residuals[at] = r
            scored[rows] = True
            self.windows += ends.size
        return WindowScores(scored, scores, feature_errors, residuals)

    def _score(
        self, windows: torch.Tensor, mask: torch.Tensor
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        with torch.inference_mode():
            windows = windows.contiguous()
            reconstruction = self.model.network(windows)
            s, fe, r = masked_errors(windows, mask, reconstruction)
        return s.double().numpy(), fe.double().numpy(), r.double().numpy()


def _nothing(rows: int, features: int) -> WindowScores:
    return WindowScores(
        np.zeros(rows, dtype=np.bool_),
        np.full(rows, np.nan),
        np.full((rows, features), np.nan),
        np.full((rows, features), np.nan),
    )
