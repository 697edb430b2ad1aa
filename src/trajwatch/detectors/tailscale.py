"""Per-feature tail scale: measure each feature's |z| in units of its own recent tail.

MD features do not all have normal tails: a window's displacement kurtosis, a crest
factor or an integer lag make excursions that a max-|z| rule reads as faults although
they come back every few hundred frames. :class:`TailScale` keeps each feature's last
``window`` |z| values (in arrival order, with the few largest of them sorted: the
quantile is a high order statistic) and divides |z_k| by max(1, q_k / reference), where
q_k is the feature's ``q``-quantile of recent |z| and ``reference`` the same quantile
for a normal variable (2.576 for q = 0.99). Features with
normal tails pass unchanged; a fault that moves a feature far beyond its own tail still
scores high, and a feature gone non-finite still scores infinity.

>>> import numpy as np
>>> ts = TailScale(window=200)
>>> rng = np.random.default_rng(0)
>>> for z in np.c_[rng.normal(size=500), rng.standard_t(2, size=500)]:
...     ts.learn(z)
>>> heavy, normal = ts.scaled_max(np.array([0.0, 8.0])), ts.scaled_max(np.array([8.0, 0.0]))
>>> bool(heavy < 5.0), bool(normal > 6.5)
(True, True)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from trajwatch.detectors import _kernels
from trajwatch.detectors.base import State, register

__all__ = ["TailScale"]


@register
class TailScale:
    """Sliding windows of |z| per feature, and the max of tail-scaled |z|."""

    def __init__(self, window: int = 256, q: float = 0.99, min_n: int = 50) -> None:
        self.window = window
        self.q = q
        self.min_n = min_n
        self.reference = _normal_abs_quantile(q)
        self.ring: NDArray[np.float64] = np.zeros((0, window))
        self.top: NDArray[np.float64] = np.zeros((0, _top_size(window, q)))
        """Per feature, the largest values of the window, largest first (as many as the
        quantile may need: 3 for q = 0.99 and a window of 256)."""
        self.meta: NDArray[np.float64] = np.zeros((0, 2))

    def _ensure(self, size: int) -> None:
        if self.ring.shape[0] != size:
            self.ring = np.zeros((size, self.window))
            self.top = np.zeros((size, self.top.shape[1]))
            self.meta = np.zeros((size, 2))

    def learn(self, z: NDArray[np.float64]) -> None:
        self._ensure(z.size)
        _kernels._tail_learn(z, self.ring, self.top, self.meta)

    def scaled_max(self, z: NDArray[np.float64]) -> float:
        self._ensure(z.size)
        return float(
            _kernels._tail_scaled_max(z, self.top, self.meta, self.q, self.reference, self.min_n)
        )

    def get_state(self) -> State:
        return {
            "type": type(self).__name__,
            "params": {"window": self.window, "q": self.q, "min_n": self.min_n},
            "ring": self.ring.copy(),
            "top": self.top.copy(),
            "meta": self.meta.copy(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TailScale:
        ts = cls(**state["params"])
        ts.ring = np.array(state["ring"], dtype=np.float64).reshape(-1, ts.window)
        ts.meta = np.array(state["meta"], dtype=np.float64).reshape(-1, 2)
        ts.top = np.zeros((ts.ring.shape[0], ts.top.shape[1]))
        if "top" in state:
            ts.top[:] = np.array(state["top"], dtype=np.float64).reshape(ts.top.shape)
        else:  # a state written when the whole window was kept sorted
            srt = np.array(state["sorted"], dtype=np.float64).reshape(-1, ts.window)
            for k, n in enumerate(ts.meta[:, 0].astype(int)):
                m = min(n, ts.top.shape[1])
                ts.top[k, :m] = srt[k, n - m : n][::-1]
        return ts


def _top_size(window: int, q: float) -> int:
    """How many of the largest values the q-quantile can be: the most n - rank(n) over
    every fill n of the window, rank(n) = ceil(q n) - 1 as the kernel computes it."""
    return max(
        (n - min(n - 1, max(0, math.ceil(q * n) - 1)) for n in range(1, window + 1)), default=1
    )


def _normal_abs_quantile(q: float) -> float:
    """The q-quantile of |N(0, 1)|."""
    from scipy.special import ndtri

    return float(ndtri(0.5 + q / 2.0)) if 0.0 < q < 1.0 else math.inf
