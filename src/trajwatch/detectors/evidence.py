"""Evidence for an alarm: where it started, which features, which atoms.

* **Onset** (:class:`Cusum`): a one-sided CUSUM over the fused surprise,
  S_t = max(0, S_{t-1} + min(s_t, cap) - k). Under normal operation s has mean
  1/ln 10 ~ 0.43 (s = -log10 p of a uniform p), so with k = 1 the sum keeps returning
  to 0; the onset of an alarm is the first frame of the excursion that is under way when
  it fires. An abrupt fault gives onset = alarm frame; a slow one, the frame where the
  surprise began to run consistently high.
* **Features** (:func:`top_features`): the largest |z| (a value gone non-finite has
  z = ±inf; unavailable features are left out), with value and signed deviation.
* **Atoms** (:func:`atoms`): from the feature engine's per-atom attribution; when the
  top feature is about distances or structure the closest pair leads, otherwise the
  atoms that moved most.

>>> c = Cusum()
>>> for i, s in enumerate([0.2, 0.5, 0.1, 3.0, 4.0, 9.0]):
...     c.update(i, s)
>>> c.onset(5)
3
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from trajwatch.detectors import _kernels
from trajwatch.events import FeatureDeviation

__all__ = ["STRUCTURE_HINTS", "Cusum", "atoms", "top_features"]

STRUCTURE_HINTS = ("dist", "rdf", "pair", "clash", "coord", "neighbo")
"""Substrings of feature names that point at a pair of atoms rather than a mover."""
CAUSE_FEATURES = ("nonfinite_count",)
"""Features that, when non-zero, explain why other features broke: they lead the list."""


class Cusum:
    """One-sided CUSUM of the fused surprise; remembers where the current excursion began.

    The reference is max(``reference``, m + 0.5), m a slow running mean of the surprise
    (α = 0.01, values capped at 5): 1 while p-values are calibrated (m ≈ 0.43), higher
    when a judged run sits a little off its reference model all along, so the sum still
    returns to 0 between faults. The state lives in the array :attr:`state` (sum, start,
    mean), so the detector stack's fused kernel can drive the same CUSUM.
    """

    def __init__(self, reference: float = 1.0, cap: float = 50.0) -> None:
        self.reference = reference
        self.cap = cap
        self.state: NDArray[np.float64] = np.array([0.0, 0.0, 1.0 / math.log(10.0)])

    @property
    def sum(self) -> float:
        return float(self.state[0])

    @property
    def start(self) -> int:
        return int(self.state[1])

    @property
    def mean(self) -> float:
        return float(self.state[2])

    def update(self, index: int, surprise: float) -> None:
        _kernels._cusum(self.state, index, surprise, self.reference, self.cap)

    def onset(self, index: int) -> int:
        """First frame of the excursion under way at ``index`` (``index`` if none)."""
        return min(self.start, index)

    def reset(self, index: int = 0) -> None:
        self.state[:] = (0.0, index, 1.0 / math.log(10.0))


def top_features(
    names: Sequence[str],
    x: NDArray[np.float64],
    z: NDArray[np.float64],
    k: int,
    *,
    urgent: NDArray[np.bool_] | None = None,
    level: float = 5.0,
) -> list[FeatureDeviation]:
    """The ``k`` features furthest from normal, by |z|; unavailable ones (z NaN) never.

    A feature whose value turned non-finite has z = ±inf and ranks high, but a non-zero
    ``nonfinite_count`` leads: it names the cause, the others are its casualties.
    Features flagged ``urgent`` (per-frame ones) that are beyond ``level`` sd come before
    the rest: they say what happened in this frame, while window statistics summarise it
    and can have a larger z only because they barely vary when all is well.
    """
    key = np.where(np.isnan(z), -1.0, np.abs(z))
    cause = np.array([n in CAUSE_FEATURES for n in names]) & (x > 0) & (key >= 0)
    first = cause if urgent is None else urgent & (key > level)
    order = np.lexsort((-key, ~first, ~cause))[:k]  # the last key sorts first
    return [FeatureDeviation(names[i], float(x[i]), float(z[i])) for i in order if key[i] >= 0]


def atoms(attribution: Any, features: Sequence[FeatureDeviation], k: int) -> list[int]:
    """Atom indices behind an alarm, most responsible first (at most ``k`` + the pair)."""
    if attribution is None:
        return []
    moved = [int(a) for a in getattr(attribution, "moved_most", ())][:k]
    pair = [int(a) for a in getattr(attribution, "closest_pair", ()) if int(a) >= 0]
    structural = bool(features) and any(h in features[0].name for h in STRUCTURE_HINTS)
    first, second = (pair, moved) if structural else (moved, pair)
    out: list[int] = []
    for a in first + second:
        if a not in out:
            out.append(a)
    return out
