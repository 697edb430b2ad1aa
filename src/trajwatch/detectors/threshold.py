"""Adaptive thresholds that wrap any detector: conformal p-values or a running quantile.

A threshold turns a detector's raw score into a decision that means the same thing for
every detector and every run:

* :class:`Calibrator` keeps the scores of the last ``size`` frames judged normal (in
  arrival order and sorted, so a p-value is a binary search) and
  turns a new score into a conformal p-value, p = (1 + #{calibration >= s}) / (n + 1),
  reported as a *surprise* -log10 p. Past the k-th largest calibration score (k = 5 %
  of n) the empirical tail is continued by an exponential fitted to the k largest
  (peaks over threshold), so an extreme score gets a tiny, finite p instead of the
  floor 1 / (n + 1).
* :class:`ConformalThreshold` alarms when p < ``alpha``; :class:`QuantileThreshold`
  when the score exceeds ``margin`` times the running ``q``-quantile of normal scores.

Both score each frame *before* learning it, learn only frames they do not flag (and
none while an alarm is on), stay silent for ``warmup`` frames, and pass their decision
through :class:`~trajwatch.detectors.hysteresis.Hysteresis`, so one fault is one
``"start"`` and one ``"end"``.

>>> import numpy as np
>>> from trajwatch.detectors.zscore import ZScore
>>> th = ConformalThreshold(ZScore(), alpha=1e-4, warmup=50)
>>> rng = np.random.default_rng(0)
>>> changes = [th.update(v).change for v in rng.normal(size=(600, 3))]
>>> changes.count("start")
0
>>> th.update(np.array([0.0, 0.0, 40.0])).change
'start'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from trajwatch.detectors import _kernels
from trajwatch.detectors.base import Detector, State, register
from trajwatch.detectors.hysteresis import Hysteresis

__all__ = ["Calibrator", "ConformalThreshold", "QuantileThreshold", "Verdict"]


@register
class Calibrator:
    """Conformal p-values from a ring of normal scores, with an exponential tail."""

    def __init__(self, size: int = 1000, tail: float = 0.05, refit_every: int = 16) -> None:
        self.size = size
        self.tail_fraction = tail
        self.refit_every = refit_every
        self.ring: NDArray[np.float64] = np.zeros((2, size))
        self.state: NDArray[np.int64] = np.array([0, 0, 0, refit_every], dtype=np.int64)
        self.tail: NDArray[np.float64] = np.array([math.inf, 1.0, tail, 0.0])

    @property
    def n(self) -> int:
        return int(self.state[0])

    def add(self, score: float) -> None:
        """Add the score of a frame judged normal."""
        if math.isfinite(score):
            _kernels._calib_add(score, self.ring, self.state, self.tail)

    def surprise(self, score: float) -> float:
        """-log10 of the p-value of ``score`` (0 while empty)."""
        return float(_kernels._calib_surprise(score, self.ring, self.state, self.tail))

    def quantile(self, q: float) -> float:
        return float(_kernels._calib_quantile(self.ring, self.state, q))

    def get_state(self) -> State:
        return {
            "type": type(self).__name__,
            "params": {
                "size": self.size,
                "tail": self.tail_fraction,
                "refit_every": self.refit_every,
            },
            "ring": self.ring.copy(),
            "state": self.state.copy(),
            "tail": self.tail.copy(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Calibrator:
        cal = cls(**state["params"])
        cal.ring = np.array(state["ring"], dtype=np.float64).reshape(2, -1)
        cal.state = np.array(state["state"], dtype=np.int64)
        cal.tail = np.array(state["tail"], dtype=np.float64)
        return cal


@dataclass(frozen=True)
class Verdict:
    """One frame's outcome: the raw score, its level, whether it is flagged, and the
    hysteresis change (``"start"``, ``"end"`` or None)."""

    score: float
    level: float
    flagged: bool
    change: Literal["start", "end"] | None


class _Threshold:
    """Shared gating: score, judge, learn only what is normal, hysteresis."""

    def __init__(
        self,
        detector: Detector,
        *,
        warmup: int,
        release_frames: int,
        calibration: int,
    ) -> None:
        self.detector = detector
        self.warmup = warmup
        self.calibrator = Calibrator(calibration)
        self.frames = 0
        self.alarm = Hysteresis(self._alarm_level(), self._release_level(), release_frames)

    def _alarm_level(self) -> float:
        raise NotImplementedError

    def _release_level(self) -> float:
        raise NotImplementedError

    def _level(self, score: float) -> float:
        raise NotImplementedError

    def update(self, x: NDArray[np.float64]) -> Verdict:
        self.frames += 1
        score = self.detector.score_one(x)
        if self.frames <= self.warmup:
            self.detector.learn_one(x)
            if self.frames > self.warmup // 2:  # the first scores come from a newborn model
                self.calibrator.add(score)
            return Verdict(score, 0.0, False, None)
        level = self._level(score)
        flagged = level > self._alarm_level()
        change = self.alarm.update(level)
        if not flagged and not self.alarm.active:
            self.detector.learn_one(x)
            self.calibrator.add(score)
        return Verdict(score, level, flagged, change)


class ConformalThreshold(_Threshold):
    """Alarm when the conformal p-value of a frame's score is below ``alpha``.

    The level is the surprise -log10 p; the alarm ends after ``release_frames`` frames
    with p above ``release_alpha``.
    """

    def __init__(
        self,
        detector: Detector,
        alpha: float = 1e-5,
        *,
        release_alpha: float = 1e-2,
        warmup: int = 50,
        release_frames: int = 10,
        calibration: int = 1000,
    ) -> None:
        self.alpha = alpha
        self.release_alpha = release_alpha
        super().__init__(
            detector, warmup=warmup, release_frames=release_frames, calibration=calibration
        )

    def _alarm_level(self) -> float:
        return -math.log10(self.alpha)

    def _release_level(self) -> float:
        return -math.log10(self.release_alpha)

    def _level(self, score: float) -> float:
        return self.calibrator.surprise(score)


class QuantileThreshold(_Threshold):
    """Alarm when the score exceeds ``margin`` x the running ``q``-quantile of the
    scores of normal frames. The level is score / quantile."""

    def __init__(
        self,
        detector: Detector,
        q: float = 0.999,
        *,
        margin: float = 1.5,
        release: float = 1.0,
        warmup: int = 50,
        release_frames: int = 10,
        calibration: int = 1000,
    ) -> None:
        self.q = q
        self.margin = margin
        self.release = release
        super().__init__(
            detector, warmup=warmup, release_frames=release_frames, calibration=calibration
        )

    def _alarm_level(self) -> float:
        return self.margin

    def _release_level(self) -> float:
        return self.release

    def _level(self, score: float) -> float:
        quantile = self.calibrator.quantile(self.q)
        if not math.isfinite(score):
            return math.inf
        if quantile <= 0:
            return math.inf if score > quantile else 0.0
        return score / quantile
