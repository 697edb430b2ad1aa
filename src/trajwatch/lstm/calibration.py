"""Turning reconstruction errors into p-values and an alarm threshold.

The model keeps the sorted errors of its validation windows (windows it was not fitted
on). A new window's error ``e`` gets the conformal p-value

    p(e) = (1 + #{validation errors >= e}) / (n + 1),

which is uniform on clean windows exchangeable with the validation ones (overlapping
windows of one run are not independent, so read it as calibrated, not as exact). The
alarm threshold is the conformal (1 - alpha) quantile: the smallest validation error
``t`` with ``p(e) <= alpha`` for every ``e > t``, times a safety ``margin`` (1 by default).
When ``n`` is too small for ``alpha`` (``(n + 1) * alpha < 1``) the largest validation
error is used. The per-feature mean validation errors are kept to express a window's
per-feature error as "times normal".

>>> import numpy as np
>>> cal = Calibration.from_errors(np.arange(1.0, 100.0), np.ones((99, 1)), alpha=0.05)
>>> cal.threshold, cal.p_value(0.5), cal.p_value(99.0), round(cal.p_value(1000.0), 4)
(95.0, 1.0, 0.02, 0.01)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["Calibration"]


@dataclass(frozen=True)
class Calibration:
    """Sorted validation errors, the alarm threshold and per-feature normal errors."""

    errors: NDArray[np.float64]
    """Validation window errors, ascending (at most ``max_points``, evenly spaced ranks)."""
    n_windows: int
    """How many validation windows the errors were taken from."""
    threshold: float
    alpha: float
    margin: float
    feature_errors: NDArray[np.float64]
    """Mean validation error of each feature (the scale of "normal" per feature)."""

    @classmethod
    def from_errors(
        cls,
        errors: ArrayLike,
        feature_errors: ArrayLike,
        *,
        alpha: float = 1e-3,
        margin: float = 1.0,
        max_points: int = 4096,
    ) -> Calibration:
        """Calibrate on validation ``errors`` (n,) and per-feature errors (n, F)."""
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), not {alpha}")
        values = np.sort(np.asarray(errors, dtype=np.float64))
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise ValueError("no finite validation error to calibrate on")
        n = values.size
        rank = math.ceil((1 - alpha) * (n + 1))
        threshold = float(values[min(rank, n) - 1]) * margin
        per_feature = np.asarray(feature_errors, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            normal = np.nanmean(per_feature, axis=0) if per_feature.size else per_feature
        normal = np.where(np.isfinite(normal) & (normal > 0), normal, 1.0)
        if n > max_points:
            values = values[np.round(np.linspace(0, n - 1, max_points)).astype(np.intp)]
        return cls(values, n, threshold, alpha, margin, normal)

    def p_value(self, error: float) -> float:
        """Conformal p-value of one window error (1.0 for NaN: no evidence)."""
        return float(self.p_values(np.array([error]))[0])

    def p_values(self, errors: ArrayLike) -> NDArray[np.float64]:
        """Conformal p-values of many errors; NaN errors get 1.0."""
        e = np.asarray(errors, dtype=np.float64)
        below = np.searchsorted(self.errors, e, side="left")
        # Ranks are on the stored points; rescale to the full validation set.
        at_or_above = (self.errors.size - below) * (self.n_windows / self.errors.size)
        p = (1.0 + at_or_above) / (self.n_windows + 1.0)
        return np.where(np.isnan(e), 1.0, np.minimum(p, 1.0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "errors": self.errors.tolist(),
            "n_windows": self.n_windows,
            "threshold": self.threshold,
            "alpha": self.alpha,
            "margin": self.margin,
            "feature_errors": self.feature_errors.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        errors = np.asarray(data["errors"], dtype=np.float64)
        if errors.ndim != 1 or errors.size == 0 or np.any(np.diff(errors) < 0):
            raise ValueError("calibration errors must be a non-empty ascending list")
        return cls(
            errors=errors,
            n_windows=int(data["n_windows"]),
            threshold=float(data["threshold"]),
            alpha=float(data["alpha"]),
            margin=float(data["margin"]),
            feature_errors=np.asarray(data["feature_errors"], dtype=np.float64),
        )
