"""Drift: slow changes in standardised features (a heating ramp, a degrading potential).

Two change detectors, vectorised over features in one Numba call each:

* :class:`PageHinkley`: two-sided Page-Hinkley test per feature (Page 1954; Hinkley
  1971): cumulative deviations from the running mean, less a tolerated ``delta``, alarm
  when they climb ``threshold`` above their minimum (or fall below their maximum).
* :class:`ADWIN`: adaptive windowing (Bifet & Gavaldà 2007) over a bounded window per
  feature: a change when some split of the window into old and new parts has means
  further apart than a variance-aware Hoeffding-type bound at confidence ``delta``.

Both assume roughly independent inputs, and MD features are not: window statistics are
correlated over tens of frames. :class:`DriftWatch` therefore feeds them *block means*
of z-scores (``block`` frames each, z clipped to +-``clip`` so one wild frame cannot
pose as a trend), which also makes drift detection cost nothing per frame. It reports
each change once, then stays quiet for ``cooldown`` frames.

>>> import numpy as np
>>> watch = DriftWatch(block=10)
>>> rng = np.random.default_rng(0)
>>> quiet = [watch.update(z) for z in rng.normal(size=(1000, 3))]
>>> sum(len(c) for c in quiet)
0
>>> noise = rng.normal(size=(500, 3))
>>> ramp = [watch.update(z + [0.0, 0.01 * t, 0.0]) for t, z in enumerate(noise)]
>>> [(c.feature, c.detector) for changes in ramp for c in changes][:1]
[(1, 'page-hinkley')]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from trajwatch.detectors import _kernels
from trajwatch.detectors.base import State, as_vector, register

__all__ = ["ADWIN", "Change", "DriftWatch", "PageHinkley"]


@register
class PageHinkley:
    """Two-sided Page-Hinkley per feature; ``update`` returns the features that fired."""

    def __init__(self, delta: float = 0.25, threshold: float = 12.0, min_samples: int = 8) -> None:
        self.delta = delta
        self.threshold = threshold
        self.min_samples = min_samples
        self.state: NDArray[np.float64] = np.zeros((0, 6))
        self.statistic: NDArray[np.float64] = np.zeros(0)

    def update(self, x: NDArray[np.float64]) -> list[int]:
        x = as_vector(x)
        if self.state.shape[0] != x.size:
            self.state = np.zeros((x.size, 6))
            self.statistic = np.zeros(x.size)
        before = self.statistic
        fired = _kernels._page_hinkley(
            x, self.state, self.delta, self.threshold, float(self.min_samples), before
        )
        if not fired:
            return []
        return [int(k) for k in np.flatnonzero(np.abs(before) > self.threshold)]

    def get_state(self) -> State:
        return {
            "type": type(self).__name__,
            "params": {
                "delta": self.delta,
                "threshold": self.threshold,
                "min_samples": self.min_samples,
            },
            "state": self.state.copy(),
            "statistic": self.statistic.copy(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PageHinkley:
        det = cls(**state["params"])
        det.state = np.array(state["state"], dtype=np.float64).reshape(-1, 6)
        det.statistic = np.array(state["statistic"], dtype=np.float64)
        return det


@register
class ADWIN:
    """Bounded-window ADWIN per feature; ``update`` returns the features whose mean moved."""

    def __init__(
        self, delta: float = 1e-3, window: int = 64, min_window: int = 6, clock: int = 1
    ) -> None:
        self.delta = delta
        self.window = window
        self.min_window = min_window
        self.clock = clock
        self.ticks = 0
        self.ring: NDArray[np.float64] = np.zeros((0, window))
        self.meta: NDArray[np.float64] = np.zeros((0, 2))
        self.shift: NDArray[np.float64] = np.zeros(0)

    def update(self, x: NDArray[np.float64]) -> list[int]:
        x = as_vector(x)
        if self.ring.shape[0] != x.size:
            self.ring = np.zeros((x.size, self.window))
            self.meta = np.zeros((x.size, 2))
            self.shift = np.zeros(x.size)
        self.ticks += 1
        check = self.ticks % self.clock == 0
        cut = _kernels._adwin(
            x, self.ring, self.meta, self.delta, self.min_window, check, self.shift
        )
        return [int(k) for k in np.flatnonzero(self.shift)] if cut else []

    def get_state(self) -> State:
        return {
            "type": type(self).__name__,
            "params": {
                "delta": self.delta,
                "window": self.window,
                "min_window": self.min_window,
                "clock": self.clock,
            },
            "ticks": self.ticks,
            "ring": self.ring.copy(),
            "meta": self.meta.copy(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ADWIN:
        det = cls(**state["params"])
        det.ticks = int(state["ticks"])
        det.ring = np.array(state["ring"], dtype=np.float64).reshape(-1, det.window)
        det.meta = np.array(state["meta"], dtype=np.float64).reshape(-1, 2)
        det.shift = np.zeros(det.ring.shape[0])
        return det


@dataclass(frozen=True)
class Change:
    """A drift found in one feature: by whom, and the block-mean z that showed it."""

    feature: int
    detector: str
    z: float


@register
class DriftWatch:
    """Block means of z-scores into Page-Hinkley and ADWIN, with a cooldown."""

    def __init__(
        self,
        block: int = 25,
        clip: float = 8.0,
        cooldown: int = 1000,
        page_hinkley: PageHinkley | None = None,
        adwin: ADWIN | None = None,
        use_adwin: bool = True,
        features: Sequence[int] | None = None,
    ) -> None:
        self.block = block
        self.features = None if features is None else np.asarray(features, dtype=np.intp)
        """Indices of the features watched (None: all)."""
        self.clip = clip
        self.cooldown = cooldown
        self.page_hinkley = page_hinkley or PageHinkley()
        self.adwin = (adwin or ADWIN()) if use_adwin else None
        self.frames = 0
        self.quiet_until = 0
        self._sum: NDArray[np.float64] = np.zeros(0)
        self._n: NDArray[np.float64] = np.zeros(0)

    def update(self, z: NDArray[np.float64]) -> list[Change]:
        """Add one frame's z-scores (NaN = unknown); returns the changes found, if any."""
        self._ensure(z.size)
        _kernels._block_add(z, self._sum, self._n, self.clip)
        return self._tick()

    def _ensure(self, size: int) -> None:
        if self._sum.size != size:
            self._sum = np.zeros(size)
            self._n = np.zeros(size)

    def _tick(self) -> list[Change]:
        """Count a frame whose z-scores are in the block sums; test a block when full.

        (The detector stack's fused kernel adds to the block sums itself, then calls this.)
        """
        self.frames += 1
        if self.frames % self.block:
            return []
        size = self._sum.size
        mean = np.divide(self._sum, self._n, out=np.full(size, np.nan), where=self._n > 0)
        self._sum[:] = 0.0
        self._n[:] = 0.0
        index = np.arange(size) if self.features is None else self.features
        mean = mean[index]
        changes = [
            Change(int(index[k]), "page-hinkley", float(mean[k]))
            for k in self.page_hinkley.update(mean)
        ]
        if self.adwin is not None:
            seen = {c.feature for c in changes}
            changes += [
                Change(int(index[k]), "adwin", float(mean[k]))
                for k in self.adwin.update(mean)
                if int(index[k]) not in seen
            ]
        if not changes or self.frames < self.quiet_until:
            return []
        self.quiet_until = self.frames + self.cooldown
        return sorted(changes, key=lambda c: -abs(c.z))

    def get_state(self) -> State:
        return {
            "type": type(self).__name__,
            "params": {
                "block": self.block,
                "clip": self.clip,
                "cooldown": self.cooldown,
                "features": None if self.features is None else self.features.tolist(),
            },
            "page_hinkley": self.page_hinkley.get_state(),
            "adwin": None if self.adwin is None else self.adwin.get_state(),
            "frames": self.frames,
            "quiet_until": self.quiet_until,
            "sum": self._sum.copy(),
            "n": self._n.copy(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> DriftWatch:
        adwin = state["adwin"]
        watch = cls(
            **state["params"],
            page_hinkley=PageHinkley.from_state(state["page_hinkley"]),
            adwin=None if adwin is None else ADWIN.from_state(adwin),
            use_adwin=adwin is not None,
        )
        watch.frames = int(state["frames"])
        watch.quiet_until = int(state["quiet_until"])
        watch._sum = np.array(state["sum"], dtype=np.float64)
        watch._n = np.array(state["n"], dtype=np.float64)
        return watch
