"""Plain NumPy reference implementations of the feature formulas (clarity over speed).

The tests hold the Numba kernels and the incremental engine to these functions; the
formulas are the ones written in ``docs/features.md``.

>>> import numpy as np
>>> cell = np.eye(3) * 10.0
>>> round(float(minimum_image(np.array([[9.0, 0.0, 0.0]]), cell, np.ones(3, bool))[0, 0]), 9)
-1.0
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


def minimum_image(d: FloatArray, cell: FloatArray | None, pbc: NDArray[np.bool_]) -> FloatArray:
    """Vectors ``d`` (M, 3) wrapped to the nearest periodic image (fractional rounding)."""
    if cell is None or not pbc.any():
        return np.array(d, dtype=np.float64)
    s: FloatArray = d @ np.linalg.inv(cell)
    s[:, pbc] -= np.rint(s[:, pbc])
    wrapped: FloatArray = s @ cell
    return wrapped


def displacements(
    positions: FloatArray, previous: FloatArray, cell: FloatArray | None, pbc: NDArray[np.bool_]
) -> FloatArray:
    """|r_i(t) - r_i(t-1)| per atom, minimum image."""
    lengths: FloatArray = np.linalg.norm(minimum_image(positions - previous, cell, pbc), axis=1)
    return lengths


def closest_pair(
    positions: FloatArray, cell: FloatArray | None, pbc: NDArray[np.bool_]
) -> tuple[float, int, int]:
    """Smallest minimum-image distance over pairs i < j, and the pair."""
    n = len(positions)
    if n < 2:
        return float("inf"), -1, -1
    i, j = np.triu_indices(n, k=1)
    r = np.linalg.norm(minimum_image(positions[j] - positions[i], cell, pbc), axis=1)
    k = int(np.argmin(r))
    return float(r[k]), int(i[k]), int(j[k])


def kinetic_energy(velocities: FloatArray, masses: FloatArray) -> float:
    """Sum of m v² / 2 in amu·Å²/fs²."""
    return float(0.5 * np.sum(masses[:, None] * velocities**2))
