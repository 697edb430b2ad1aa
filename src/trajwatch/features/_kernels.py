"""Private Numba kernels: arrays in, arrays out, no Python objects.

Public wrappers in :mod:`trajwatch.features.engine` validate inputs; these trust them.
Each kernel has a plain NumPy reference in :mod:`trajwatch.features.reference` and is
tested against it, with and without ``NUMBA_DISABLE_JIT=1``.

Cells are row vectors (``r = s @ cell`` for fractional ``s``), as in ASE and extxyz.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _minimum_image(d: np.ndarray, cell: np.ndarray, inv_cell: np.ndarray, pbc: np.ndarray) -> None:
    """Wrap the vectors ``d`` (M, 3) in place into the cell's minimum image."""
    for i in range(d.shape[0]):
        s0 = d[i, 0] * inv_cell[0, 0] + d[i, 1] * inv_cell[1, 0] + d[i, 2] * inv_cell[2, 0]
        s1 = d[i, 0] * inv_cell[0, 1] + d[i, 1] * inv_cell[1, 1] + d[i, 2] * inv_cell[2, 1]
        s2 = d[i, 0] * inv_cell[0, 2] + d[i, 1] * inv_cell[1, 2] + d[i, 2] * inv_cell[2, 2]
        if pbc[0]:
            s0 -= np.rint(s0)
        if pbc[1]:
            s1 -= np.rint(s1)
        if pbc[2]:
            s2 -= np.rint(s2)
        for k in range(3):
            d[i, k] = s0 * cell[0, k] + s1 * cell[1, k] + s2 * cell[2, k]


@njit(cache=True, nogil=True)
def _step_displacements(
    positions: np.ndarray,
    previous: np.ndarray,
    unwrapped: np.ndarray,
    cell: np.ndarray,
    inv_cell: np.ndarray,
    pbc: np.ndarray,
    d: np.ndarray,
    displacement: np.ndarray,
) -> None:
    """Per-atom step ``d`` (N, 3) since ``previous`` (minimum image) and its length.

    Writes d_i into ``d``, |d_i| into ``displacement`` (N,) and adds d_i to
    ``unwrapped`` (N, 3), so an atom that crosses the boundary keeps a continuous path.
    """
    n = positions.shape[0]
    for i in range(n):
        for k in range(3):
            d[i, k] = positions[i, k] - previous[i, k]
    if pbc[0] or pbc[1] or pbc[2]:
        _minimum_image(d, cell, inv_cell, pbc)
    for i in range(n):
        s = 0.0
        for k in range(3):
            unwrapped[i, k] += d[i, k]
            s += d[i, k] * d[i, k]
        displacement[i] = np.sqrt(s)


@njit(cache=True, nogil=True)
def _closest_pair(
    positions: np.ndarray, cell: np.ndarray, inv_cell: np.ndarray, pbc: np.ndarray
) -> np.ndarray:
    """Return ``[d_min, i, j]`` over all pairs i < j (minimum image); inf when N < 2."""
    n = positions.shape[0]
    best = np.inf
    bi = -1
    bj = -1
    periodic = pbc[0] or pbc[1] or pbc[2]
    d = np.empty((1, 3))
    for i in range(n):
        for j in range(i + 1, n):
            for k in range(3):
                d[0, k] = positions[j, k] - positions[i, k]
            if periodic:
                _minimum_image(d, cell, inv_cell, pbc)
            r2 = d[0, 0] * d[0, 0] + d[0, 1] * d[0, 1] + d[0, 2] * d[0, 2]
            if r2 < best:
                best = r2
                bi = i
                bj = j
    out = np.empty(3)
    out[0] = np.sqrt(best)
    out[1] = bi
    out[2] = bj
    return out


@njit(cache=True, nogil=True)
def _kinetic_energy(velocities: np.ndarray, masses: np.ndarray) -> float:
    """Sum of m v² / 2 in amu·Å²/fs² (multiply by AMU_A2_PER_FS2_IN_EV for eV)."""
    total = 0.0
    for i in range(velocities.shape[0]):
        v2 = velocities[i, 0] ** 2 + velocities[i, 1] ** 2 + velocities[i, 2] ** 2
        total += masses[i] * v2
    return 0.5 * total
