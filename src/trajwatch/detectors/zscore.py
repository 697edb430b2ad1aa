"""Standardised z-score: how many standard deviations the most extreme feature is away.

Running mean and variance per feature with Welford's update (numerically stable, O(1)
per frame, one Numba call). The score is max_k |x_k - mean_k| / std_k over the features
that are available. A floor on std (``rel_floor`` of |mean| plus ``abs_floor``) keeps a
feature that has not moved yet from turning round-off into an alarm; a feature that was
finite for ``min_streak`` frames in a row and turns NaN or infinite scores infinity.

>>> import numpy as np
>>> det = ZScore()
>>> for v in np.random.default_rng(0).normal(10.0, 1.0, size=(200, 2)):
...     det.learn_one(v)
>>> det.score_one(np.array([10.0, 10.0])) < 1, det.score_one(np.array([10.0, 20.0])) > 8
(True, True)
>>> det.score_one(np.array([np.nan, 10.0]))
inf
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from trajwatch.detectors import _kernels
from trajwatch.detectors.base import State, as_vector, register
from trajwatch.detectors.tailscale import TailScale

__all__ = ["ZScore"]

_NO_TAIL = (np.zeros((0, 1)), np.zeros((0, 1)), np.zeros((0, 2)))


@register
class ZScore:
    """Welford z-score over a feature vector; NaN features are skipped."""

    def __init__(
        self,
        rel_floor: float = 1e-4,
        abs_floor: float = 1e-12,
        min_streak: int = 20,
        tail: int = 0,
    ) -> None:
        self.rel_floor = rel_floor
        self.abs_floor = abs_floor
        self.min_streak = min_streak
        self.tail = TailScale(tail) if tail else None
        """Optional :class:`TailScale`: score each feature in units of its own tail."""
        self._zl: NDArray[np.float64] = np.zeros(0)
        self.quantum: NDArray[np.float64] = np.zeros((0, 3))
        """Per feature: last value, smallest non-zero change (a floor on std)."""
        self.stats: NDArray[np.float64] = np.zeros((4, 0))
        self._ready = False
        self.z: NDArray[np.float64] = np.zeros(0)
        """Signed z of the last vector scored (scratch, overwritten by each call)."""

    def _ensure(self, size: int) -> None:
        if self.stats.shape[1] != size:
            self._ready = False
            self.stats = np.zeros((4, size))
            self.z = np.zeros(size)
            self._zl = np.zeros(size)
            self.quantum = np.zeros((size, 3))

    @property
    def count(self) -> NDArray[np.float64]:
        return np.asarray(self.stats[0])

    @property
    def mean(self) -> NDArray[np.float64]:
        return np.asarray(self.stats[1])

    @property
    def ready(self) -> bool:
        # Welford counts only grow: once ready, always ready (checked once per frame).
        if not self._ready:
            self._ready = bool(self.stats.shape[1]) and float(self.stats[0].max()) >= 2
        return self._ready

    def learn_one(self, x: NDArray[np.float64]) -> None:
        x = as_vector(x)
        self._ensure(x.size)
        self._learn(x)

    def _learn(self, x: NDArray[np.float64]) -> None:
        """learn_one for a vector already checked to be float64, 1-D, the right size."""
        _kernels._welford_z(
            x, self.stats, self.rel_floor, self.abs_floor, float(self.min_streak),
            self.quantum, self._zl,
        )  # fmt: skip
        self._learn_scored(x, self._zl)

    def _learn_scored(self, x: NDArray[np.float64], z: NDArray[np.float64] | None = None) -> None:
        """Learn ``x`` right after scoring it: its z (``self.z``) is already known."""
        t = self._tail_arrays
        _kernels._zscore_learn(
            x, self.z if z is None else z, self.stats, self.quantum, t[0], t[1], t[2]
        )

    @property
    def _tail_arrays(self) -> tuple[NDArray[np.float64], ...]:
        if self.tail is None:
            return _NO_TAIL
        self.tail._ensure(self.stats.shape[1])
        return self.tail.ring, self.tail.top, self.tail.meta

    def std(self) -> NDArray[np.float64]:
        c = self.stats[0]
        variance = np.divide(self.stats[2], c - 1, out=np.zeros_like(c), where=c > 1)
        floor = self.rel_floor * np.abs(self.stats[1]) + self.abs_floor
        floor = np.maximum(floor, self.quantum[:, 1])
        return np.asarray(np.maximum(np.sqrt(np.maximum(variance, 0.0)), floor))

    def score_one(self, x: NDArray[np.float64]) -> float:
        x = as_vector(x)
        self._ensure(x.size)
        return self._score(x)

    def _score(self, x: NDArray[np.float64]) -> float:
        t = self._tail_arrays
        tail = self.tail
        return float(
            _kernels._zscore_score(
                x, self.stats, self.rel_floor, self.abs_floor, float(self.min_streak),
                self.quantum, self.z, t[1], t[2],
                0.99 if tail is None else tail.q,
                0.0 if tail is None else tail.reference,
                0 if tail is None else tail.min_n,
            )
        )  # fmt: skip

    def deviations(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        """Signed z per feature; NaN where the feature or its statistics are missing."""
        self.score_one(x)
        return np.array(self.z)

    def get_state(self) -> State:
        return {
            "type": type(self).__name__,
            "params": {
                "rel_floor": self.rel_floor,
                "abs_floor": self.abs_floor,
                "min_streak": self.min_streak,
            },
            "stats": self.stats.copy(),
            "quantum": self.quantum.copy(),
            "tail": None if self.tail is None else self.tail.get_state(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ZScore:
        det = cls(**state["params"])
        det.stats = np.array(state["stats"], dtype=np.float64).reshape(4, -1)
        det.z = np.zeros(det.stats.shape[1])
        det._zl = np.zeros(det.stats.shape[1])
        det.quantum = np.array(state["quantum"], dtype=np.float64).reshape(-1, 3)
        if state.get("tail") is not None:
            det.tail = TailScale.from_state(state["tail"])
        return det
