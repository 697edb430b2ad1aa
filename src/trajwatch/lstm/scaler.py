"""Per-feature standardisation, fitted on the training frames, with explicit missing values.

A feature vector ``x`` becomes ``z = (x - mean) / scale``, clipped to ``±clip`` (so an
infinite or absurd value is a very large, finite input rather than an overflow), plus a
mask that is False where ``x`` was NaN (the feature is unavailable: no velocities, no
energy) and for every feature that was never available in the training data (the network
has learned nothing about it). Masked entries are fed to the network as 0 (the training
mean) and left out of the reconstruction error.

>>> import numpy as np
>>> s = Scaler.fit(np.array([[1.0, np.nan], [3.0, np.nan]]))
>>> z, mask = s.transform(np.array([[2.0, 5.0], [np.inf, np.nan]]))
>>> z.tolist(), mask.tolist()
([[0.0, 0.0], [1000.0, 0.0]], [[True, False], [True, False]])

A model meant for systems it was not trained on can instead standardise every stream by
its own first frames (:class:`StreamScaling`): the network then sees each run's
fluctuations in that run's own units, whatever the metal, size or temperature.

>>> policy = StreamScaling(frames=3, floor=np.array([0.5, 0.5]), skip=1)
>>> own = policy.fit(np.array([[99.0, 7.0], [10.0, 1.0], [12.0, 1.0], [14.0, 1.0]]), s)
>>> own.mean.tolist(), own.scale.round(3).tolist()  # a column that did not move: the floor
([12.0, 1.0], [1.633, 0.5])
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["Scaler", "StreamScaling"]


@dataclass(frozen=True)
class Scaler:
    """``mean`` and ``scale`` per feature; ``clip`` bounds the standardised values."""

    mean: NDArray[np.float64]
    scale: NDArray[np.float64]
    available: NDArray[np.bool_]
    """Features that had at least one finite value in the training data."""
    clip: float = 1000.0

    @classmethod
    def fit(
        cls,
        X: NDArray[np.float64],
        rel_floor: float = 1e-3,
        abs_floor: float | NDArray[np.float64] = 1e-12,
    ) -> Scaler:
        """Mean and standard deviation of the finite values of each column of ``X``.

        A column that never moved gets a floor of ``max(rel_floor * |mean|, abs_floor)`` (a
        number or one per column) so that
        round-off does not turn into huge standardised values; a column with no finite
        value at all gets mean 0 and scale 1 (it is masked out anyway).
        """
        X = np.asarray(X, dtype=np.float64)
        finite = np.isfinite(X)
        count = finite.sum(axis=0)
        values = np.where(finite, X, 0.0)
        mean = np.divide(values.sum(axis=0), count, out=np.zeros(X.shape[1]), where=count > 0)
        centred = np.where(finite, X - mean, 0.0)
        variance = np.divide(
            (centred**2).sum(axis=0), count, out=np.zeros(X.shape[1]), where=count > 0
        )
        floor = np.maximum(rel_floor * np.abs(mean), abs_floor)
        scale = np.where(count > 0, np.maximum(np.sqrt(variance), floor), 1.0)
        return cls(mean=mean, scale=scale, available=count > 0)

    @property
    def n_features(self) -> int:
        return int(self.mean.size)

    def transform(self, X: NDArray[np.float64]) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """Standardised float32 values (0 where missing) and the availability mask."""
        X = np.asarray(X, dtype=np.float64)
        mask = ~np.isnan(X) & self.available
        with np.errstate(invalid="ignore"):
            z = np.clip((X - self.mean) / self.scale, -self.clip, self.clip)
        z[~mask] = 0.0
        return z.astype(np.float32), mask

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "available": self.available.tolist(),
            "clip": self.clip,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scaler:
        mean = np.asarray(data["mean"], dtype=np.float64)
        scale = np.asarray(data["scale"], dtype=np.float64)
        available = np.asarray(data["available"], dtype=np.bool_)
        if mean.ndim != 1 or not mean.shape == scale.shape == available.shape:
            raise ValueError("scaler mean, scale and available must be 1-D, of one length")
        if not (np.isfinite(mean).all() and np.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError("scaler mean must be finite and scale finite and positive")
        return cls(mean=mean, scale=scale, available=available, clip=float(data["clip"]))


@dataclass(frozen=True)
class StreamScaling:
    """Standardise each stream by the mean and spread of its frames ``skip`` to
    ``skip + frames``.

    ``skip`` leaves out the first frames, in which the feature engine's window statistics
    are still filling up (their values are not typical yet). ``floor`` bounds each
    feature's spread from below (in the feature's units), so a feature that happens to
    stand still during the scaling frames does not turn its first ordinary move into
    thousands of standard deviations. Features the model never saw (unavailable in
    training) and features unavailable in those frames stay masked.
    """

    frames: int
    floor: NDArray[np.float64]
    skip: int = 0

    @property
    def span(self) -> int:
        """Frames a stream must have delivered before it can be standardised."""
        return self.skip + self.frames

    @classmethod
    def from_runs(
        cls,
        runs: Sequence[NDArray[np.float64]],
        frames: int,
        floor_fraction: float,
        skip: int = 0,
    ) -> StreamScaling:
        """Floors at ``floor_fraction`` of the median spread of each feature over the
        scaling frames of the training runs (runs where it was available)."""
        spreads = []
        for X in runs:
            s = Scaler.fit(X[skip : skip + frames], rel_floor=0.0, abs_floor=0.0)
            spreads.append(np.where(s.available, s.scale, np.nan))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            median = np.nanmedian(np.array(spreads), axis=0)
        floor = np.where(np.isfinite(median), median * floor_fraction, 0.0)
        return cls(frames=frames, floor=np.maximum(floor, 1e-12), skip=skip)

    def fit(self, first: NDArray[np.float64], reference: Scaler) -> Scaler:
        """The scaler of one stream from its first :attr:`span` rows; masks follow
        ``reference``. No floor relative to the mean: the result must not depend on a
        feature's level."""
        if first.shape[0] < self.span:
            raise ValueError(f"stream scaling needs {self.span} frames, got {first.shape[0]}")
        rows = first[self.skip : self.span]
        own = Scaler.fit(rows, rel_floor=0.0, abs_floor=self.floor)
        return Scaler(own.mean, own.scale, own.available & reference.available, reference.clip)

    def to_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "skip": self.skip, "floor": self.floor.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StreamScaling:
        floor = np.asarray(data["floor"], dtype=np.float64)
        if floor.ndim != 1 or not (np.isfinite(floor).all() and (floor > 0).all()):
            raise ValueError("stream scaling floor must be 1-D, finite and positive")
        return cls(frames=int(data["frames"]), floor=floor, skip=int(data.get("skip", 0)))
