"""Per-feature tail scale: measure each feature's |z| in units of its own recent tail.

MD features do not all have normal tails: a window's displacement kurtosis, a crest
factor or an integer lag make excursions that a max-|z| rule reads as faults although
they come back every few hundred frames. :class:`TailScale` keeps each feature's last
``window`` |z| values (arrival order and sorted, as in
:mod:`~trajwatch.detectors.robust_zscore`) and divides |z_k| by
max(1, q_k / reference), where q_k is the feature's ``q``-quantile of recent |z| and
``reference`` the same quantile for a normal variable (2.576 for q = 0.99). Features with
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
        self.sorted: NDArray[np.float64] = np.zeros((0, window))
        self.meta: NDArray[np.float64] = np.zeros((0, 2))

    def _ensure(self, size: int) -> None:
        if self.ring.shape[0] != size:
            self.ring = np.zeros((size, self.window))
            self.sorted = np.zeros((size, self.window))
            self.meta = np.zeros((size, 2))

    def learn(self, z: NDArray[np.float64]) -> None:
        self._ensure(z.size)
        _kernels._tail_learn(z, self.ring, self.sorted, self.meta)

    def scaled_max(self, z: NDArray[np.float64]) -> float:
        self._ensure(z.size)
        return float(
            _kernels._tail_scaled_max(
                z, self.sorted, self.meta, self.q, self.reference, self.min_n
            )
        )

    def get_state(self) -> State:
        return {
            "type": type(self).__name__,
            "params": {"window": self.window, "q": self.q, "min_n": self.min_n},
            "ring": self.ring.copy(),
            "sorted": self.sorted.copy(),
            "meta": self.meta.copy(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TailScale:
        ts = cls(**state["params"])
        ts.ring = np.array(state["ring"], dtype=np.float64).reshape(-1, ts.window)
        ts.sorted = np.array(state["sorted"], dtype=np.float64).reshape(-1, ts.window)
        ts.meta = np.array(state["meta"], dtype=np.float64).reshape(-1, 2)
        return ts


def _normal_abs_quantile(q: float) -> float:
    """The q-quantile of |N(0, 1)|."""
    from scipy.special import ndtri

    return float(ndtri(0.5 + q / 2.0)) if 0.0 < q < 1.0 else math.inf
