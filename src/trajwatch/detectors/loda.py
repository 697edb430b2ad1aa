"""LODA (Pevný 2016): lightweight on-line detector of anomalies, on standardised features.

``n_projections`` sparse random projections (``ceil(sqrt(d))`` non-zero N(0, 1) weights
each, normalised) of the features' z-scores, each with a fixed-size histogram
(``bins`` bins over +-``half_range`` sd of the projection, plus two overflow bins). The
score is the mean over projections of -log(density) under the reference window. Like
:mod:`~trajwatch.detectors.hst` it keeps a reference and a latest window in one array
and swaps them when the latest is full; each new window is binned with the mean and sd
of the projections of the one before, so the bins follow the data at no extra cost.

>>> import numpy as np
>>> det = LODA(window=128, seed=1)
>>> rng = np.random.default_rng(0)
>>> for v in rng.normal(size=(400, 9)):
...     det.learn_one(v)
>>> normal = np.mean([det.score_one(v) for v in rng.normal(size=(50, 9))])
>>> bool(det.score_one(np.full(9, 4.0)) > normal + 1)
True
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from trajwatch.detectors import _kernels
from trajwatch.detectors.base import State, as_vector, register

__all__ = ["LODA"]


@register
class LODA:
    """Histogram ensemble over sparse random projections, with windowed histograms."""

    def __init__(
        self,
        n_projections: int = 50,
        bins: int = 16,
        half_range: float = 4.0,
        window: int = 128,
        alpha: float = 0.5,
        seed: int = 0,
    ) -> None:
        self.n_projections = n_projections
        self.bins = bins
        self.half_range = half_range
        self.window = window
        self.alpha = alpha
        self.seed = seed
        p = n_projections
        self.stats: NDArray[np.float64] = np.zeros((4, 0))
        self.index: NDArray[np.int64] = np.zeros((p, 0), dtype=np.int64)
        self.weight: NDArray[np.float64] = np.zeros((p, 0))
        self.counts: NDArray[np.float64] = np.zeros((2, p, bins + 2))
        self.scale: NDArray[np.float64] = np.zeros((2, p, 2))
        self.pstats: NDArray[np.float64] = np.zeros((p, 3))
        self.state: NDArray[np.int64] = np.array([0, 0, window, 0], dtype=np.int64)
        self._z: NDArray[np.float64] = np.zeros(0)
        self._proj: NDArray[np.float64] = np.zeros(p)

    def _build(self, size: int) -> None:
        rng = np.random.default_rng(self.seed)
        nnz = max(1, min(size, math.ceil(math.sqrt(size))))
        self.index = np.stack(
            [np.sort(rng.choice(size, nnz, replace=False)) for _ in range(self.n_projections)]
        ).astype(np.int64)
        w = rng.normal(size=(self.n_projections, nnz))
        self.weight = w / np.linalg.norm(w, axis=1, keepdims=True)
        self.stats = np.zeros((4, size))
        self.counts[:] = 0.0
        self.scale[:, :, 0] = 0.0
        self.scale[:, :, 1] = 1.0
        self.pstats[:] = 0.0
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
        _kernels._loda_learn_x(
            x, self.stats, self._z, self.index, self.weight, self._proj, self.counts,
            self.scale, self.pstats, self.state, self.half_range,
        )  # fmt: skip

    def _learn_scored(self, x: NDArray[np.float64]) -> None:
        """Learn ``x`` right after ``_score(x)``: its projections are already known."""
        if not self.state[3]:  # before the first window closes, _score projects nothing
            self._learn(x)
            return
        _kernels._loda_learn_projected(
            x, self.stats, self._proj, self.counts, self.scale, self.pstats, self.state,
            self.half_range,
        )  # fmt: skip

    def score_one(self, x: NDArray[np.float64]) -> float:
        x = as_vector(x)
        if self.stats.shape[1] != x.size:
            self._build(x.size)
        return self._score(x)

    def _score(self, x: NDArray[np.float64]) -> float:
        if not self.state[3]:
            return 0.0
        return float(
            _kernels._loda_score_x(
                x, self.stats, self._z, self.index, self.weight, self._proj, self.counts,
                self.scale, self.state, self.half_range, self.alpha,
            )
        )  # fmt: skip

    def get_state(self) -> State:
        return {
            "type": type(self).__name__,
            "params": {
                "n_projections": self.n_projections,
                "bins": self.bins,
                "half_range": self.half_range,
                "window": self.window,
                "alpha": self.alpha,
                "seed": self.seed,
            },
            "stats": self.stats.copy(),
            "index": self.index.copy(),
            "weight": self.weight.copy(),
            "counts": self.counts.copy(),
            "scale": self.scale.copy(),
            "pstats": self.pstats.copy(),
            "state": self.state.copy(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LODA:
        det = cls(**state["params"])
        det.stats = np.array(state["stats"], dtype=np.float64).reshape(4, -1)
        det.index = np.array(state["index"], dtype=np.int64)
        det.weight = np.array(state["weight"], dtype=np.float64)
        for name in ("counts", "scale", "pstats"):
            setattr(det, name, np.array(state[name], dtype=np.float64))
        det.state = np.array(state["state"], dtype=np.int64)
        det._z = np.zeros(det.stats.shape[1])
        return det
