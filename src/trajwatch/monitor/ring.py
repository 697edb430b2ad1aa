"""A fixed-size ring of floats: O(1) per value pushed, the last ``size`` values on demand.

The monitor keeps one ring per plotted quantity and source, so a sparkline costs the
ingest loop one store per frame, however long the run.

>>> ring = Ring(3)
>>> for value in (1.0, 2.0, 3.0, 4.0):
...     ring.push(value)
>>> ring.values().tolist(), len(ring), ring.pushed
([2.0, 3.0, 4.0], 3, 4)
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["Ring"]


class Ring:
    """The last ``size`` floats pushed, oldest first."""

    __slots__ = ("_data", "pushed", "size")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, not {size}")
        self.size = size
        self._data: NDArray[np.float64] = np.full(size, np.nan)
        self.pushed = 0
        """Values pushed since the start (not capped at ``size``)."""

    def push(self, value: float) -> None:
        self._data[self.pushed % self.size] = value
        self.pushed += 1

    def __len__(self) -> int:
        return min(self.pushed, self.size)

    def last(self) -> float:
        """The newest value (NaN when empty)."""
        return float(self._data[(self.pushed - 1) % self.size]) if self.pushed else np.nan

    def values(self) -> NDArray[np.float64]:
        """A read-only copy of the values held, oldest first."""
        n = len(self)
        start = (self.pushed - n) % self.size
        out = np.roll(self._data, -start)[:n] if start else self._data[:n].copy()
        out.setflags(write=False)
        return out
