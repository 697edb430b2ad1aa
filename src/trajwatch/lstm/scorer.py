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
        w = model.window
        # Each standardised row is written twice, at t % w and t % w + w, so that the last
        # w rows are always one contiguous slice: no shifting, no copying per frame.
        self._ring = np.zeros((2 * w, n), dtype=np.float32)
        self._ring_mask = np.zeros((2 * w, n), dtype=np.bool_)
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
        """Forget the stream (the next score comes ``window`` frames later)."""
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
        if n_features != self._ring.shape[1]:
            raise ValueError(f"expected {self._ring.shape[1]} features, got {n_features}")
        if self.scaler is None:  # stream scaling: wait for the stream's first frames
            policy = self.model.stream_scaling
            assert policy is not None
            self._pending = np.concatenate([self._pending, X])
            if self._pending.shape[0] < policy.span:
                self.frames += n_rows
                return _nothing(n_rows, n_features)
            self.scaler = policy.fit(self._pending[: policy.span], self.model.scaler)
            # Score from the stream's frame 0 on, now that its scale is known.
            X, self._pending = self._pending, self._pending[:0]
            self.frames = 0
        z, mask = self.scaler.transform(X)
        if z.shape[0] == 1 and self.frames >= self.window - 1:
            return self._push_one(z[0], mask[0])
        return self._push_many(z, mask, n_rows)

    def _history(self, h: int) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """The last ``h`` (< window) standardised rows and their masks."""
        start = (self.frames - h) % self.window
        return self._ring[start : start + h], self._ring_mask[start : start + h]

    def _write(self, z: NDArray[np.float32], mask: NDArray[np.bool_]) -> None:
        """Append rows to the ring (only the last ``window`` of them matter)."""
        w = self.window
        keep = min(z.shape[0], w)
        for t, row, m in zip(
            range(self.frames - keep, self.frames), z[-keep:], mask[-keep:], strict=True
        ):
            slot = t % w
            self._ring[slot] = self._ring[slot + w] = row
            self._ring_mask[slot] = self._ring_mask[slot + w] = m

    def _push_one(self, z: NDArray[np.float32], mask: NDArray[np.bool_]) -> WindowScores:
        """One new row with a full history: the window is a view of the ring."""
        t = self.frames
        self.frames += 1
        w = self.window
        slot = t % w
        self._ring[slot] = self._ring[slot + w] = z
        self._ring_mask[slot] = self._ring_mask[slot + w] = mask
        n = z.size
        if t < self.model.first_scored_frame or (t - (w - 1)) % self.stride:
            return _nothing(1, n)
        windows = self._ring[slot + 1 : slot + 1 + w][None]
        masks = self._ring_mask[slot + 1 : slot + 1 + w][None]
        s, fe, r = self._score(windows, masks)
        self.windows += 1
        return WindowScores(np.ones(1, dtype=np.bool_), s, fe, r)

    def _push_many(
        self, z: NDArray[np.float32], mask: NDArray[np.bool_], n_out: int
    ) -> WindowScores:
        """Rows ``z`` (the last ``n_out`` of them are the caller's), windows in batches."""
        w = self.window
        h = min(self.frames, w - 1)
        hz, hm = self._history(h)
        z_seq = np.concatenate([hz, z])
        mask_seq = np.concatenate([hm, mask])
        first = self.frames  # stream index of z[0]
        self.frames += z.shape[0]
        self._write(z, mask)
        n_features = z.shape[1]
        out_first = self.frames - n_out  # stream index of the caller's first row
        ends = np.arange(max(out_first, self.model.first_scored_frame), self.frames)
        ends = ends[(ends - (w - 1)) % self.stride == 0]
        scores = np.full(n_out, np.nan)
        feature_errors = np.full((n_out, n_features), np.nan)
        residuals = np.full((n_out, n_features), np.nan)
        scored = np.zeros(n_out, dtype=np.bool_)
        if ends.size:
            starts = ends - (first - h) - (w - 1)  # window starts within z_seq
            z_windows = np.lib.stride_tricks.sliding_window_view(z_seq, w, axis=0)
            m_windows = np.lib.stride_tricks.sliding_window_view(mask_seq, w, axis=0)
            rows = ends - out_first
            for lo in range(0, ends.size, self.max_batch):
                pick = starts[lo : lo + self.max_batch]
                # sliding_window_view puts the window axis last: (k, F, w) -> (k, w, F)
                s, fe, r = self._score(
                    z_windows[pick].transpose(0, 2, 1), m_windows[pick].transpose(0, 2, 1)
                )
                at = rows[lo : lo + self.max_batch]
                scores[at] = s
                feature_errors[at] = fe
                residuals[at] = r
            scored[rows] = True
            self.windows += ends.size
        return WindowScores(scored, scores, feature_errors, residuals)

    def _score(
        self, windows: NDArray[np.float32], masks: NDArray[np.bool_]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        windows = np.ascontiguousarray(windows)
        with torch.inference_mode():
            reconstruction = self.model.network(torch.from_numpy(windows)).numpy()
        return window_errors(windows, masks, reconstruction)


def window_errors(
    windows: NDArray[np.float32], masks: NDArray[np.bool_], reconstruction: NDArray[np.float32]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Per-window score, per-feature error and per-feature mean residual, over available entries.

    ``masks`` is True where a feature was available. The score is the mean squared error
    over the available (time, feature) entries of each window (NaN if none are); the
    per-feature error is the mean squared error of each feature over the window's
    available steps, and the residual its mean signed error (input - reconstruction),
    both NaN where a feature was never available in the window.
    """
    weight = masks.astype(np.float64)
    residual = (windows.astype(np.float64) - reconstruction) * weight
    squared = residual * residual
    per_feature = weight.sum(axis=1)
    total = per_feature.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = squared.sum(axis=(1, 2)) / total
        feature_error = squared.sum(axis=1) / per_feature
        feature_residual = residual.sum(axis=1) / per_feature
    return score, feature_error, feature_residual


def _nothing(rows: int, features: int) -> WindowScores:
    return WindowScores(
        np.zeros(rows, dtype=np.bool_),
        np.full(rows, np.nan),
        np.full((rows, features), np.nan),
        np.full((rows, features), np.nan),
    )
