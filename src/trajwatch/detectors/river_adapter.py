"""Run any River anomaly detector (``HalfSpaceTrees``, ``OneClassSVM``, ...) on
standardised features.

The adapter keeps a Welford standardiser, turns each vector into River's ``{name: z}``
dict (NaN and infinite entries are left out, so the model sees what it can use) and, for
models that expect features in [0, 1] (River's ``HalfSpaceTrees``), squashes z with a
logistic, 1 / (1 + exp(-z / 2)). River models cannot be saved without pickle, so the
saved state holds the model's class and parameters plus the last ``replay`` vectors it
learned; loading rebuilds the model and re-learns them (an approximate restore, exact
for models whose memory is shorter than ``replay``). Only classes from ``river.`` load.

>>> import numpy as np
>>> from river import anomaly
>>> det = RiverDetector(anomaly.HalfSpaceTrees(n_trees=5, height=4, window_size=50, seed=1))
>>> rng = np.random.default_rng(0)
>>> for v in rng.normal(size=(200, 3)):
...     det.learn_one(v)
>>> normal = np.mean([det.score_one(v) for v in rng.normal(size=(50, 3))])
>>> bool(det.score_one(np.array([6.0, -6.0, 6.0])) > normal)
True
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from trajwatch.detectors import _kernels
from trajwatch.detectors.base import State, as_vector, register

__all__ = ["RiverDetector"]


@register
class RiverDetector:
    """Adapter: a River ``AnomalyDetector`` behind the trajwatch protocol."""

    def __init__(
        self,
        model: Any = None,
        *,
        names: Sequence[str] | None = None,
        squash: bool | None = None,
        replay: int = 1000,
    ) -> None:
        if model is None:
            from river import anomaly

            model = anomaly.HalfSpaceTrees(seed=0)
        self.model = model
        self.names = list(names) if names is not None else None
        self.squash = type(model).__name__ == "HalfSpaceTrees" if squash is None else squash
        self.replay = replay
        self.learned = 0
        self.stats: NDArray[np.float64] = np.zeros((4, 0))
        self._z: NDArray[np.float64] = np.zeros(0)
        self._keys: list[str] = []
        self._memory: NDArray[np.float64] = np.zeros((replay, 0))

    def _ensure(self, size: int) -> None:
        if self.stats.shape[1] != size:
            self.stats = np.zeros((4, size))
            self._z = np.zeros(size)
            self._keys = list(self.names) if self.names else [f"x{k}" for k in range(size)]
            if len(self._keys) != size:
                raise ValueError(f"{len(self._keys)} names for {size} features")
            self._memory = np.zeros((self.replay, size))

    @property
    def ready(self) -> bool:
        return self.learned > 0

    def _as_dict(self, x: NDArray[np.float64]) -> dict[str, float]:
        _kernels._standardise(x, self.stats, 1e-4, 1e-12, self._z)
        finite = np.isfinite(x)
        z = self._z
        if self.squash:
            z = 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60) / 2.0))
        return {k: float(v) for k, v, ok in zip(self._keys, z, finite, strict=True) if ok}

    def learn_one(self, x: NDArray[np.float64]) -> None:
        x = as_vector(x)
        self._ensure(x.size)
        self.model.learn_one(self._as_dict(x))
        _kernels._welford_learn(x, self.stats)
        if self.replay:
            self._memory[self.learned % self.replay] = x
        self.learned += 1

    def score_one(self, x: NDArray[np.float64]) -> float:
        x = as_vector(x)
        self._ensure(x.size)
        score = float(self.model.score_one(self._as_dict(x)))
        return score if not math.isnan(score) else math.inf

    def get_state(self) -> State:
        n = min(self.learned, self.replay)
        order = [(self.learned - n + i) % self.replay for i in range(n)] if self.replay else []
        cls = type(self.model)
        return {
            "type": type(self).__name__,
            "params": {"names": self.names, "squash": self.squash, "replay": self.replay},
            "model": {
                "class": f"{cls.__module__}.{cls.__qualname__}",
                "params": _encode(self.model._get_params()),
            },
            "memory": self._memory[order].copy() if n else np.zeros((0, self.stats.shape[1])),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RiverDetector:
        spec = state["model"]
        model = _build(spec["class"], spec["params"])
        det = cls(model, **state["params"])
        for x in np.asarray(state["memory"], dtype=np.float64):
            det.learn_one(x)
        return det


def _encode(value: Any) -> Any:
    """River's ``_get_params()`` as JSON: nested estimators are (class, params) pairs."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], type):
        cls = value[0]
        return {"__class__": f"{cls.__module__}.{cls.__qualname__}", "params": _encode(value[1])}
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"cannot save River parameter {value!r} without pickle")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "__class__" in value:
            return _build(value["__class__"], value["params"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _build(path: str, params: dict[str, Any]) -> Any:
    module, _, name = path.rpartition(".")
    if not module.startswith("river."):
        raise ValueError(f"refusing to load {path!r}: only River classes can be rebuilt")
    cls = getattr(importlib.import_module(module), name)
    return cls(**{k: _decode(v) for k, v in params.items()})
