"""Hysteresis: one fault, one alarm, one recovery.

An alarm starts when the score rises above ``threshold`` and ends only after
``release_frames`` consecutive scores at or below ``release`` (< threshold), so a score
that hovers around the threshold does not flap.

>>> h = Hysteresis(threshold=8.0, release=4.0, release_frames=2)
>>> [h.update(s) for s in [1, 9, 12, 6, 3, 3, 1]]
[None, 'start', None, None, None, 'end', None]
"""

from __future__ import annotations

from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray

from trajwatch.detectors import _kernels

__all__ = ["Hysteresis"]

_CHANGES: Final[tuple[Literal["start", "end"] | None, ...]] = (None, "start", "end")


class Hysteresis:
    """Two-level switch over a score stream; ``active`` is True during an alarm.

    The switch keeps its state in the small array :attr:`state` (active, peak, quiet
    frames) so that the detector stack's fused kernel can drive the same switch.
    """

    def __init__(self, threshold: float, release: float, release_frames: int = 10) -> None:
        if not release < threshold:
            raise ValueError(f"release ({release}) must be below threshold ({threshold})")
        self.threshold = threshold
        self.release = release
        self.release_frames = release_frames
        self.state: NDArray[np.float64] = np.zeros(3)
        """[active (0/1), peak score of the alarm, consecutive quiet frames]"""

    @property
    def active(self) -> bool:
        return bool(self.state[0])

    @property
    def peak(self) -> float:
        return float(self.state[1])

    def update(self, score: float) -> Literal["start", "end"] | None:
        code = _kernels._hysteresis(
            self.state, self.threshold, self.release, self.release_frames, score
        )
        return _CHANGES[code]
