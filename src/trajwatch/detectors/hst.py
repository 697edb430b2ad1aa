"""Half-space trees (Tan, Ting & Liu 2011) in fixed-size arrays, on standardised features.

``n_trees`` random trees of depth ``height`` over the z-scores of the features (a
Welford standardiser learns alongside). Each tree is two arrays in heap order (split
feature and split value per internal node), built once from a seed; masses live in one
``(2, trees, nodes)`` array whose halves are the reference and the latest window. When
the latest window is full the halves swap and the new latest one is zeroed: a few
microseconds, never a rebuild (River's tree objects stall for seconds at default size).
Split values follow the paper: each tree gets a random work range per feature around
[-3, 3] standard deviations, and every split halves the range of its feature.

The score is ``log(1 + window * 2^height) - log(1 + mass)``, where ``mass`` is the
paper's r * 2^depth averaged over trees: small in dense regions, largest where the
reference window had nothing. It is 0 until the first window is complete.

>>> import numpy as np
>>> det = HalfSpaceTrees(window=128, seed=1)
>>> rng = np.random.default_rng(0)
>>> for v in rng.normal(size=(400, 4)):
...     det.learn_one(v)
>>> normal = np.mean([det.score_one(v) for v in rng.normal(size=(50, 4))])
>>> bool(det.score_one(np.array([0.0, 9.0, -9.0, 0.0])) > normal)
True
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from trajwatch.detectors import _kernels
from trajwatch.detectors.base import State, as_vector, register

__all__ = ["HalfSpaceTrees"]


@register
class HalfSpaceTrees:
    """Streaming half-space trees with windowed reference masses."""

    def __init__(
        self,
        n_trees: int = 25,
        height: int = 8,
        window: int = 128,
        size_limit: float | None = None,
        seed: int = 0,
    ) -> None:
        self.n_trees = n_trees
        self.height = height
        self.window = window
        self.size_limit = 0.1 * window if size_limit is None else size_limit
        self.seed = seed
        self.stats: NDArray[np.float64] = np.zeros((4, 0))
        self.feature: NDArray[np.int64] = np.zeros((n_trees, 0), dtype=np.int64)
        self.split: NDArray[np.float64] = np.zeros((n_trees, 0))
        self.mass: NDArray[np.float64] = np.zeros((2, n_trees, 2 ** (height + 1) - 1))
        self.state: NDArray[np.int64] = np.array([0, 0, window, 0], dtype=np.int64)
        self._z: NDArray[np.float64] = np.zeros(0)

    def _build(self, size: int) -> None:
        """Draw the trees for ``size`` features (the only allocation, done once)."""
        rng = np.random.default_rng(self.seed)
        internal = 2**self.height - 1
        self.feature = np.zeros((self.n_trees, internal), dtype=np.int64)
        self.split = np.zeros((self.n_trees, internal))
        for t in range(self.n_trees):
            s = rng.uniform(-3.0, 3.0, size=size)
            r = 2.0 * np.maximum(s + 3.0, 3.0 - s)
            lo = np.repeat((s - r)[None, :], internal, axis=0)  # per node: its ranges
            hi = np.repeat((s + r)[None, :], internal, axis=0)
            for node in range(internal):
                q = int(rng.integers(size))
                mid = 0.5 * (lo[node, q] + hi[node, q])
                self.feature[t, node] = q
                self.split[t, node] = mid
                for child, bound in ((2 * node + 1, hi), (2 * node + 2, lo)):
                    if child < internal:
                        lo[child] = lo[node]
                        hi[child] = hi[node]
                        bound[child, q] = mid
        self.stats = np.zeros((4, size))
        self.mass[:] = 0.0
        self.state[:] = (0, 0, self.window, 0)
        self._z = np.zeros(size)

    @property
    def ready(self) -> bool:
        # The first window is binned with a standardiser that is still settling: it
        # only seeds the second.
        return bool(self.state[3] > 1)

    def learn_one(self, x: NDArray[np.float64]) -> None:
        x = as_vector(x)
        if self.stats.shape[1] != x.size:
            self._build(x.size)
        self._learn(x)

    def _learn(self, x: NDArray[np.float64]) -> None:
        _kernels._hst_learn_x(
            x, self.stats, self._z, self.feature, self.split, self.mass, self.state
        )

    def score_one(self, x: NDArray[np.float64]) -> float:
        x = as_vector(x)
        if self.stats.shape[1] != x.size:
            self._build(x.size)
        return self._score(x)

    def _score(self, x: NDArray[np.float64]) -> float:
        if not self.state[3]:
            return 0.0
        mass = _kernels._hst_score_x(
            x, self.stats, self._z, self.feature, self.split, self.mass, self.state,
            self.size_limit,
        )  # fmt: skip
        return math.log1p(self.window * 2.0**self.height) - math.log1p(mass)

    def get_state(self) -> State:
        return {
            "type": type(self).__name__,
            "params": {
                "n_trees": self.n_trees,
                "height": self.height,
                "window": self.window,
                "size_limit": self.size_limit,
                "seed": self.seed,
            },
            "stats": self.stats.copy(),
            "feature": self.feature.copy(),
            "split": self.split.copy(),
            "mass": self.mass.copy(),
            "state": self.state.copy(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> HalfSpaceTrees:
        det = cls(**state["params"])
        det.stats = np.array(state["stats"], dtype=np.float64).reshape(4, -1)
        det.feature = np.array(state["feature"], dtype=np.int64)
        det.split = np.array(state["split"], dtype=np.float64)
        det.mass = np.array(state["mass"], dtype=np.float64)
        det.state = np.array(state["state"], dtype=np.int64)
        det._z = np.zeros(det.stats.shape[1])
        return det
