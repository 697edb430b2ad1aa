"""Robust z-score: distance from the median in units of the scaled MAD, over a window.

Each feature keeps its last ``window`` learned values twice, in arrival order and
sorted, so a new value slides in with one counting pass and a shift (O(window), no
allocation, one Numba call). The median is exact at every frame; the spread
(1.4826 MAD, or 1.2533 mean absolute deviation for a feature whose MAD is zero) is
refreshed round-robin, a few features per frame. Being windowed and robust, it follows
slow legitimate change and is not dragged by the outliers it learned before they were
flagged.

>>> import numpy as np
>>> det = RobustZScore(window=101)
>>> for v in np.random.default_rng(0).normal(5.0, 2.0, size=(300, 3)):
...     det.learn_one(v)
>>> det.score_one(np.array([5.0, 5.0, 5.0])) < 1, det.score_one(np.array([5.0, 5.0, 25.0])) > 8
(True, True)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from trajwatch.detectors import _kernels
from trajwatch.detectors.base import State, as_vector, register
from trajwatch.detectors.tailscale import TailScale

__all__ = ["RobustZScore"]

_NO_TAIL = (np.zeros((0, 1)), np.zeros((0, 1)), np.zeros((0, 2)))


@register
class RobustZScore:
    """Median/MAD z-score over a sliding window of learned frames."""

    def __init__(
        self,
        window: int = 64,
        refresh_per_frame: int = 1,
        rel_floor: float = 1e-4,
        abs_floor: float = 1e-12,
        min_streak: int = 20,
        tail: int = 0,
    ) -> None:
        if window < 3:
            raise ValueError("window must be at least 3")
        self.window = window
        self.refresh_per_frame = refresh_per_frame
        self.rel_floor = rel_floor
        self.abs_floor = abs_floor
        self.min_streak = min_streak
        self.tail = TailScale(tail) if tail else None
        self._allocate(0)

    def _allocate(self, size: int) -> None:
        self.ring: NDArray[np.float64] = np.zeros((size, self.window))
        self.sorted: NDArray[np.float64] = np.zeros((size, self.window))
        self.meta: NDArray[np.float64] = np.zeros((size + 1, 3))
        self.center: NDArray[np.float64] = np.full(size, math.nan)
        self.spread: NDArray[np.float64] = np.zeros(size)
        self.z: NDArray[np.float64] = np.zeros(size)
        self.quantum: NDArray[np.float64] = np.zeros((size, 3))
        self._zl: NDArray[np.float64] = np.zeros(size)
        self._ready = False

    @property
    def ready(self) -> bool:
        if not self._ready:
            self._ready = self.center.size > 0 and float(self.meta[:-1, 0].max()) >= 3
        return self._ready

    def learn_one(self, x: NDArray[np.float64]) -> None:
        x = as_vector(x)
        if self.center.size != x.size:
            self._allocate(x.size)
        self._learn(x)

    def _learn(self, x: NDArray[np.float64]) -> None:
        self._z_into(x, self._zl)
        self._learn_scored(x, self._zl)

    def _learn_scored(self, x: NDArray[np.float64], z: NDArray[np.float64] | None = None) -> None:
        """Learn ``x`` right after scoring it: its z (``self.z``) is already known."""
        if self.tail is None:  # fewer arguments: Numba's dispatch costs per argument
            _kernels._robust_learn(
                x, self.ring, self.sorted, self.meta, self.center, self.spread,
                self.refresh_per_frame, self.quantum,
            )  # fmt: skip
            return
        t = self._tail_arrays
        _kernels._robust_learn_scored(
            x, self.z if z is None else z, self.ring, self.sorted, self.meta, self.center,
            self.spread, self.refresh_per_frame, self.quantum, t[0], t[1], t[2],
        )  # fmt: skip

    @property
    def _tail_arrays(self) -> tuple[NDArray[np.float64], ...]:
        if self.tail is None:
            return _NO_TAIL
        self.tail._ensure(self.center.size)
        return self.tail.ring, self.tail.top, self.tail.meta

    def score_one(self, x: NDArray[np.float64]) -> float:
        x = as_vector(x)
        if self.center.size != x.size:
            self._allocate(x.size)
        return self._score(x)

    def _score(self, x: NDArray[np.float64]) -> float:
        if self.tail is None:
            return self._z_into(x, self.z)
        t = self._tail_arrays
        tail = self.tail
        return float(
            _kernels._robust_score(
                x, self.meta, self.center, self.spread, self.quantum, self.rel_floor,
                self.abs_floor, float(self.min_streak), self.z, t[1], t[2],
                0.99 if tail is None else tail.q,
                0.0 if tail is None else tail.reference,
                0 if tail is None else tail.min_n,
            )
        )  # fmt: skip

    def _z_into(self, x: NDArray[np.float64], z: NDArray[np.float64]) -> float:
        return float(
            _kernels._robust_z(
                x, self.meta, self.center, self.spread, self.quantum, self.rel_floor,
                self.abs_floor, float(self.min_streak), z,
            )
        )  # fmt: skip

    def deviations(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        """Signed robust z per feature; NaN where unknown."""
        self.score_one(x)
        return np.array(self.z)

    def get_state(self) -> State:
        return {
            "type": type(self).__name__,
            "params": {
                "window": self.window,
                "refresh_per_frame": self.refresh_per_frame,
                "rel_floor": self.rel_floor,
                "abs_floor": self.abs_floor,
                "min_streak": self.min_streak,
            },
            "tail": None if self.tail is None else self.tail.get_state(),
            "quantum": self.quantum.copy(),
            "ring": self.ring.copy(),
            "sorted": self.sorted.copy(),
            "meta": self.meta.copy(),
            "center": self.center.copy(),
            "spread": self.spread.copy(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RobustZScore:
        det = cls(**state["params"])
        for name in ("ring", "sorted", "meta", "center", "spread", "quantum"):
            setattr(det, name, np.array(state[name], dtype=np.float64))
        det.quantum = det.quantum.reshape(-1, 3)
        det.z = np.zeros(det.center.size)
        det._zl = np.zeros(det.center.size)
        if state.get("tail") is not None:
            det.tail = TailScale.from_state(state["tail"])
        return det
