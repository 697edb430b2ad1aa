"""Hysteresis: one fault, one alarm, one recovery.

An alarm starts when the score rises above ``threshold`` and ends only after
``release_frames`` consecutive scores at or below ``release`` (< threshold), so a score
that hovers around the threshold does not flap.

>>> h = Hysteresis(threshold=8.0, release=4.0, release_frames=2)
>>> [h.update(s) for s in [1, 9, 12, 6, 3, 3, 1]]
[None, 'start', None, None, None, 'end', None]
"""

from __future__ import annotations

from typing import Literal

__all__ = ["Hysteresis"]


class Hysteresis:
    """Two-level switch over a score stream; ``active`` is True during an alarm."""

    def __init__(self, threshold: float, release: float, release_frames: int = 10) -> None:
        if not release < threshold:
            raise ValueError(f"release ({release}) must be below threshold ({threshold})")
        self.threshold = threshold
        self.release = release
        self.release_frames = release_frames
        self.active = False
        self.peak = 0.0
        self._quiet = 0

    def update(self, score: float) -> Literal["start", "end"] | None:
        if not self.active:
            if score > self.threshold:
                self.active = True
                self.peak = score
                self._quiet = 0
                return "start"
            return None
        self.peak = max(self.peak, score)
        self._quiet = self._quiet + 1 if score <= self.release else 0
        if self._quiet >= self.release_frames:
            self.active = False
            return "end"
        return None
