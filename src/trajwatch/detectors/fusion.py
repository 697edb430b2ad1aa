"""Fusion of calibrated p-values across detectors, as surprises s = -log10 p.

The detectors all look at the same features, so their p-values are strongly dependent;
methods that assume independence (Fisher's) would count one deviation several times.
The default is the **Cauchy combination** (Liu & Xie 2020, "ACAT"): each p-value is
mapped to a standard Cauchy variate tan((1/2 - p) pi), the weighted mean is again
standard Cauchy under arbitrary dependence (asymptotically in the tail), and maps back
to a p-value. For small p it behaves like the weighted harmonic mean of the p-values: a
single very small p carries the result, several moderately small ones reinforce each
other, and large p-values barely dilute.

Also available: ``"min"`` (Bonferroni: n x the smallest p), ``"fisher"`` (for
reference; anti-conservative here) and ``"vote"``, the seed study's k-of-n rule:
the fused surprise is the k-th largest detector surprise, so it passes a level exactly
when at least k detectors do.

>>> import numpy as np
>>> fuse = Fusion("cauchy", n=3)
>>> round(fuse(np.array([8.0, 0.3, 0.3])), 2)  # one detector sure, two not
7.52
>>> round(Fusion("vote", n=3, k=2)(np.array([8.0, 5.0, 0.3])), 1)
5.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from scipy import special, stats

from trajwatch.detectors import _kernels

__all__ = ["METHODS", "Fusion"]

METHODS = ("cauchy", "min", "fisher", "vote")


class Fusion:
    """Combine per-detector surprises (-log10 p) into one."""

    def __init__(
        self, method: str = "cauchy", *, n: int, k: int = 2, weights: Sequence[float] | None = None
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown fusion method {method!r}; expected one of {METHODS}")
        if method == "vote" and not 1 <= k <= n:
            raise ValueError(f"vote needs 1 <= k <= n, got k={k}, n={n}")
        self.method = method
        self.n = n
        self.k = k
        w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (n,) or (w < 0).any() or w.sum() <= 0:
            raise ValueError("weights must be n non-negative numbers, not all zero")
        self.weights: NDArray[np.float64] = w

    def __call__(self, surprise: NDArray[np.float64]) -> float:
        if self.method == "cauchy":
            return float(_kernels._cauchy_surprise(surprise, self.weights))
        if self.method == "min":
            return max(0.0, float(surprise.max()) - math.log10(self.n))
        if self.method == "vote":
            return float(np.partition(surprise, self.n - self.k)[self.n - self.k])
        # Fisher: -2 sum ln p ~ chi2(2n); computed in the log domain for tiny p.
        statistic = 2.0 * math.log(10.0) * float(surprise.sum())
        if not math.isfinite(statistic):
            return math.inf
        log_p = float(stats.chi2.logsf(statistic, 2 * self.n))
        return -log_p / math.log(10.0) if math.isfinite(log_p) else _fisher_tail(statistic, self.n)

    def describe(self) -> str:
        return f"vote({self.k}-of-{self.n})" if self.method == "vote" else self.method


def _fisher_tail(statistic: float, n: int) -> float:
    # log sf of chi2(2n) at large x ~ log(x/2)^(n-1) e^(-x/2) / (n-1)!
    half = statistic / 2.0
    log_p = (n - 1) * math.log(half) - half - float(special.gammaln(n))
    return -log_p / math.log(10.0)
