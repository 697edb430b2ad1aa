"""The detector protocol, River's on NumPy vectors.

A detector learns what normal looks like from feature vectors one at a time and scores new
ones: higher is more anomalous. NaN entries mean "feature unavailable" and are ignored.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

__all__ = ["Detector", "Explainer"]


@runtime_checkable
class Detector(Protocol):
    """Anything with ``learn_one`` and ``score_one`` over float64 feature vectors."""

    def learn_one(self, x: NDArray[np.float64]) -> None: ...

    def score_one(self, x: NDArray[np.float64]) -> float: ...


@runtime_checkable
class Explainer(Protocol):
    """A detector that can say how far each feature is from normal (signed, per feature)."""

    def deviations(self, x: NDArray[np.float64]) -> NDArray[np.float64]: ...
