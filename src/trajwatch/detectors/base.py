"""The detector protocol, River's on NumPy vectors, and the registry behind saved state.

A detector learns what normal looks like from feature vectors one at a time
(``learn_one``) and scores new ones (``score_one``): higher is more anomalous, never NaN.
NaN entries mean "feature unavailable"; a feature that has been finite for a long
stretch and turns NaN is itself an anomaly. A detector is ``ready`` once its scores mean
something (before that it returns 0). Every detector can give its state as a tree of JSON
values and NumPy arrays (``get_state``) and be rebuilt from it (``from_state``), which
:mod:`trajwatch.detectors.state` writes to ``.npz`` or ``.json``: never pickle.

>>> import numpy as np
>>> from trajwatch.detectors.zscore import ZScore
>>> det = ZScore()
>>> isinstance(det, Detector)
True
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
from numpy.typing import NDArray

__all__ = ["REGISTRY", "Detector", "Explainer", "Stateful", "register"]

State = dict[str, Any]


@runtime_checkable
class Detector(Protocol):
    """Anything with ``learn_one`` and ``score_one`` over float64 feature vectors."""

    def learn_one(self, x: NDArray[np.float64]) -> None: ...

    def score_one(self, x: NDArray[np.float64]) -> float: ...


@runtime_checkable
class Explainer(Protocol):
    """A detector that can say how far each feature is from normal (signed, per feature)."""

    def deviations(self, x: NDArray[np.float64]) -> NDArray[np.float64]: ...


@runtime_checkable
class Stateful(Protocol):
    """Something whose whole state is a tree of JSON values and arrays."""

    def get_state(self) -> State: ...


T = TypeVar("T")

REGISTRY: dict[str, type[Any]] = {}
"""Class name -> class, for everything :func:`trajwatch.detectors.state.load` may rebuild."""


def register(cls: type[T]) -> type[T]:
    """Class decorator: make ``cls`` loadable from saved state by its name."""
    REGISTRY[cls.__name__] = cls
    return cls


def as_vector(x: Any) -> NDArray[np.float64]:
    """``x`` as a C-contiguous 1-D float64 array (no copy when it already is one)."""
    a = np.ascontiguousarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"a feature vector must be 1-D, got shape {a.shape}")
    return a
