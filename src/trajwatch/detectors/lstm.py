"""LSTM-autoencoder detector: a pre-trained model judges the last ``window`` frames.

Reference mode only: the model was fitted on trusted runs (``trajwatch train``, or the
weights shipped with trajwatch) and does not learn from the stream, so :meth:`learn_one`
does nothing. :meth:`score_one` appends the frame's features to the window and returns
the window's reconstruction error; call it once per frame, in order. Until the first
window is full the score is 0.0; with ``stride > 1`` the frames between two scored windows
repeat the last score. :meth:`score_many` does the same for many frames at once, scoring
their windows in batches (what a consumer that fell behind should call). Scores become
conformal p-values against the model's validation errors with :meth:`p_value`.

>>> import numpy as np
>>> from trajwatch.lstm import TrainConfig, train
>>> rng = np.random.default_rng(0)
>>> X = np.sin(np.arange(600)[:, None] * [0.1, 0.3]) + rng.normal(0, 0.05, (600, 2))
>>> model = train([X], ["a", "b"], TrainConfig(window=20, hidden=16, latent=4, max_epochs=20))
>>> det = LSTMDetector(model)
>>> scores = det.score_many(X[:100])
>>> spike = X[100].copy(); spike[1] += 20.0
>>> bool(det.score_one(spike) > det.threshold > scores[-1])
True
>>> det.p_value(det.score_one(X[101])) < 0.01  # the spike is still in the window
True
>>> det.explain()[0][0]                        # the feature that explains the window worst
'b'
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from trajwatch.lstm.model import LSTMModel
from trajwatch.lstm.scorer import WindowScorer

__all__ = ["LSTMDetector"]


class LSTMDetector:
    """River-style detector over one stream, backed by an :class:`LSTMModel`.

    ``model`` is a loaded model, a path to a model file, or None for the shipped weights.
    ``features`` are the stream's feature names (``engine.names``); a model trained on
    other features is refused with :class:`~trajwatch.lstm.model.FeatureMismatchError`.
    """

    name = "lstm"

    def __init__(
        self,
        model: LSTMModel | str | Path | None = None,
        *,
        features: Sequence[str] | None = None,
        stride: int = 1,
        max_batch: int = 256,
        threads: int | None = 1,
    ) -> None:
        if model is None:
            model = LSTMModel.load_default()
        elif not isinstance(model, LSTMModel):
            model = LSTMModel.load(model)
        self.model = model
        self.features = tuple(model.features if features is None else features)
        self._scorer = WindowScorer(
            model, stride=stride, max_batch=max_batch, stream_features=self.features,
            threads=threads,
        )  # fmt: skip
        self._order = model.feature_index(self.features)
        n = len(self.features)
        self.last_score = 0.0
        self.scored_frames = 0
        """Frames with a score (held ones included) since the start or the last reset."""
        self._feature_errors: NDArray[np.float64] = np.full(n, np.nan)
        self._residuals: NDArray[np.float64] = np.full(n, np.nan)

    @property
    def threshold(self) -> float:
        """Window error above which the model's calibration calls a window anomalous."""
        return self.model.threshold

    @property
    def window(self) -> int:
        return self.model.window

    @property
    def stride(self) -> int:
        return self._scorer.stride

    @property
    def ready(self) -> bool:
        """True once a full window has been scored (since the start or the last reset)."""
        return self.scored_frames > 0

    def reset(self) -> None:
        """Forget the stream (after a structure change): the next score is a window later."""
        self._scorer.reset()
        self.last_score = 0.0
        self.scored_frames = 0
        self._feature_errors = np.full(len(self.features), np.nan)
        self._residuals = np.full(len(self.features), np.nan)

    def learn_one(self, x: NDArray[np.float64]) -> None:
        """Nothing to learn: the model is fixed (reference mode)."""

    def score_one(self, x: NDArray[np.float64]) -> float:
        """Append ``x`` (the stream's next feature vector) and score the window ending on it."""
        return float(self.score_many(np.asarray(x, dtype=np.float64)[None, :])[0])

    def score_many(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        """Append the rows of ``X`` in order; one score per row, windows scored in batches."""
        out = self._scorer.push(X)
        scores = np.empty(out.scored.size)
        last = self.last_score
        for i in range(out.scored.size):
            if out.scored[i]:
                last = float(out.scores[i])
                if not np.isfinite(last):
                    last = 0.0  # nothing in the window was available: no evidence
            scores[i] = last
        if self.scored_frames:
            self.scored_frames += out.scored.size
        elif out.scored.any():
            self.scored_frames += out.scored.size - int(np.argmax(out.scored))
        self.last_score = last
        hits = np.flatnonzero(out.scored)
        if hits.size:
            self._feature_errors = out.feature_errors[hits[-1]]
            self._residuals = out.residuals[hits[-1]]
        return scores

    def p_value(self, score: float) -> float:
        """Conformal p-value of ``score`` against the model's validation windows."""
        return self.model.calibration.p_value(score)

    def deviations(self, x: NDArray[np.float64] | None = None) -> NDArray[np.float64]:
        """Per-feature error of the latest scored window, in the stream's order.

        Signed root of the feature's error over its mean validation error: ``+3`` means
        the feature was reconstructed 3x worse than normal and ran above what the model
        expected. NaN for features unavailable in the window. ``x`` is not used (the
        latest window already ends on it); it is accepted for the Explainer protocol.
        """
        normal = self.model.calibration.feature_errors
        ratio = np.sqrt(self._feature_errors / normal) * np.sign(self._residuals)
        out = np.full(len(self.features), np.nan)
        out[self._order] = ratio
        return out

    def explain(self, top: int = 3) -> list[tuple[str, float]]:
        """The ``top`` features with the largest :meth:`deviations`, largest first."""
        d = self.deviations()
        order = np.argsort(-np.nan_to_num(np.abs(d), nan=-1.0))
        return [(self.features[k], float(d[k])) for k in order[:top] if np.isfinite(d[k])]
