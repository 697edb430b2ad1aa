"""Standardised z-score: how many standard deviations the most extreme feature is away.

Running mean and variance per feature with Welford's update (numerically stable, O(1) per
frame). The score is max_k |x_k - mean_k| / std_k over the features that are available.
A floor on std (``rel_floor`` of |mean| plus ``abs_floor``) keeps a feature that has not
moved yet from turning round-off into an alarm.

>>> import numpy as np
>>> det = ZScore()
>>> for v in np.random.default_rng(0).normal(10.0, 1.0, size=(200, 2)):
...     det.learn_one(v)
>>> det.score_one(np.array([10.0, 10.0])) < 1, det.score_one(np.array([10.0, 20.0])) > 8
(True, True)
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["ZScore"]


class ZScore:
    """Welford z-score over a feature vector; NaN features are skipped."""

    def __init__(self, rel_floor: float = 1e-4, abs_floor: float = 1e-12) -> None:
        self.rel_floor = rel_floor
        self.abs_floor = abs_floor
        self.count: NDArray[np.float64] = np.zeros(0)
        self.mean: NDArray[np.float64] = np.zeros(0)
        self.m2: NDArray[np.float64] = np.zeros(0)

    def _ensure(self, size: int) -> None:
        if self.mean.size != size:
            self.count = np.zeros(size)
            self.mean = np.zeros(size)
            self.m2 = np.zeros(size)

    def learn_one(self, x: NDArray[np.float64]) -> None:
        self._ensure(x.size)
        ok = np.isfinite(x)
        self.count += ok
        delta = np.where(ok, x - self.mean, 0.0)
        self.mean += np.divide(delta, self.count, out=np.zeros_like(delta), where=ok)
        self.m2 += np.where(ok, delta * (x - self.mean), 0.0)

    def std(self) -> NDArray[np.float64]:
        variance = np.divide(
            self.m2, self.count - 1, out=np.zeros_like(self.m2), where=self.count > 1
        )
        floor = self.rel_floor * np.abs(self.mean) + self.abs_floor
        return np.maximum(np.sqrt(variance), floor)

    def deviations(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        """Signed z per feature; NaN where the feature or its statistics are missing."""
        self._ensure(x.size)
        z = (x - self.mean) / self.std()
        z[self.count < 2] = np.nan
        return z

    def score_one(self, x: NDArray[np.float64]) -> float:
        z = np.abs(self.deviations(x))
        # A feature that was finite in training and is not finite now is as bad as it gets.
        z[~np.isfinite(x) & (self.count >= 2) & ~np.isnan(x)] = np.inf
        finite = z[~np.isnan(z)]
        return float(finite.max()) if finite.size else 0.0
