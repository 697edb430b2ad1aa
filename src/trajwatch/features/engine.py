"""The feature engine: one :class:`~trajwatch.frame.Frame` in, one named feature vector out.

>>> import numpy as np
>>> from trajwatch.frame import Frame
>>> engine = FeatureEngine()
>>> cell = np.eye(3) * 5.0
>>> x0 = engine.update(Frame([[0, 0, 0], [2.5, 0, 0]], [29, 29], cell=cell, energy=-6.0))
>>> x1 = engine.update(Frame([[4.9, 0, 0], [2.5, 0, 0]], [29, 29], cell=cell, energy=-6.0))
>>> float(x1[engine.names.index("disp_max")].round(3))  # 0 -> 4.9 across the boundary
0.1
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from trajwatch.elements import MASSES
from trajwatch.features import _kernels
from trajwatch.frame import Frame
from trajwatch.units import AMU_A2_PER_FS2_IN_EV, KB_EV_PER_K

__all__ = ["FEATURE_NAMES", "Attribution", "FeatureEngine", "warmup"]

FEATURE_NAMES: tuple[str, ...] = (
    "disp_max",
    "min_interatomic_dist",
    "kinetic_temperature",
    "energy_per_atom",
)


@dataclass(frozen=True)
class Attribution:
    """Which atoms explain the latest frame's features."""

    moved_most: NDArray[np.intp]
    """Indices of the atoms with the largest displacement, largest first."""
    closest_pair: tuple[int, int]
    """The two atoms at the minimum interatomic distance (-1, -1 if undefined)."""


class FeatureEngine:
    """Per-source feature state: feed frames in order with :meth:`update`."""

    def __init__(self, window: int = 50, top_atoms: int = 5) -> None:
        self.window = window
        self.top_atoms = top_atoms
        self.names = FEATURE_NAMES
        self._previous: NDArray[np.float64] | None = None
        self._previous_time: float | None = None
        self._numbers: NDArray[np.int32] | None = None
        self._unwrapped = np.empty((0, 3))
        self._step = np.empty((0, 3))
        self._displacement = np.empty(0)
        self._closest = (-1, -1)

    def reset(self) -> None:
        """Forget all history (e.g. after the atom count changed)."""
        self._previous = None
        self._previous_time = None
        self._numbers = None

    def update(self, frame: Frame) -> NDArray[np.float64]:
        """Features of ``frame`` given the frames before it (NaN where unavailable)."""
        positions = frame.positions
        n = frame.n_atoms
        if self._numbers is None or not np.array_equal(self._numbers, frame.numbers):
            self.reset()
            self._numbers = frame.numbers
            self._unwrapped = positions.copy()
            self._step = np.zeros((n, 3))
            self._displacement = np.zeros(n)
        if frame.has_cell:
            cell = frame.cell
            assert cell is not None
            inv_cell = np.linalg.inv(cell)
            pbc = frame.pbc
        else:
            cell = inv_cell = np.eye(3)
            pbc = np.zeros(3, dtype=np.bool_)

        x = np.full(len(self.names), math.nan)
        if self._previous is not None:
            _kernels._step_displacements(
                positions,
                self._previous,
                self._unwrapped,
                cell,
                inv_cell,
                pbc,
                self._step,
                self._displacement,
            )
            x[0] = self._displacement.max() if n else math.nan
        if n >= 2:
            closest = _kernels._closest_pair(positions, cell, inv_cell, pbc)
            x[1] = closest[0]
            self._closest = (int(closest[1]), int(closest[2]))
        masses = MASSES[frame.numbers] if n else np.empty(0)
        velocities = frame.velocities
        if velocities is None and self._previous is not None:
            velocities = self._finite_difference_velocities(frame)
        if velocities is not None and n:
            kinetic = _kernels._kinetic_energy(velocities, masses) * AMU_A2_PER_FS2_IN_EV
            x[2] = 2.0 * kinetic / (3.0 * n * KB_EV_PER_K)
        if frame.energy is not None and n:
            x[3] = frame.energy / n
        self._previous = positions
        self._previous_time = frame.time
        return x

    def _finite_difference_velocities(self, frame: Frame) -> NDArray[np.float64] | None:
        if frame.time is None or self._previous_time is None:
            return None
        dt = frame.time - self._previous_time
        if not dt > 0:
            return None
        return self._step / dt

    def attribution(self) -> Attribution:
        """Atoms behind the latest frame's features (largest movers, closest pair)."""
        k = min(self.top_atoms, self._displacement.size)
        moved = np.argsort(self._displacement)[::-1][:k]
        return Attribution(moved_most=moved, closest_pair=self._closest)


def warmup() -> float:
    """Compile every kernel on a tiny input before the first real frame; returns seconds."""
    import time

    start = time.perf_counter()
    engine = FeatureEngine()
    cell = np.eye(3) * 4.0
    for shift in (0.0, 0.1):
        engine.update(
            Frame(
                np.array([[shift, 0.0, 0.0], [2.0, 0.0, 0.0]]),
                [29, 29],
                velocities=np.zeros((2, 3)),
                cell=cell,
                energy=-1.0,
            )
        )
    return time.perf_counter() - start
