"""Every Numba kernel against its plain NumPy reference (also run with NUMBA_DISABLE_JIT=1)."""

from __future__ import annotations

import numpy as np
import pytest

from trajwatch.features import _kernels, reference

CELLS = {
    "none": None,
    "cubic": np.eye(3) * 7.0,
    "triclinic": np.array([[7.0, 0.0, 0.0], [2.1, 6.5, 0.0], [-1.3, 1.7, 8.2]]),
}


def _kernel_cell(cell: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if cell is None:
        return np.eye(3), np.eye(3), np.zeros(3, dtype=np.bool_)
    return cell, np.linalg.inv(cell), np.ones(3, dtype=np.bool_)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("n", [1, 2, 37])
def test_step_displacements_match_reference(name: str, n: int) -> None:
    rng = np.random.default_rng(n)
    cell, inv, pbc = _kernel_cell(CELLS[name])
    previous = rng.uniform(0, 7, size=(n, 3))
    positions = previous + rng.normal(scale=0.3, size=(n, 3))
    if CELLS[name] is not None:  # wrap into the cell so some atoms cross the boundary
        positions = (positions @ inv % 1.0) @ cell
    unwrapped = previous.copy()
    step = np.empty((n, 3))
    lengths = np.empty(n)
    _kernels._step_displacements(positions, previous, unwrapped, cell, inv, pbc, step, lengths)
    expected = reference.displacements(positions, previous, CELLS[name], pbc)
    np.testing.assert_allclose(lengths, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(unwrapped - previous, axis=1), expected, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(step, axis=1), expected, atol=1e-12)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("n", [1, 2, 50])
def test_closest_pair_matches_reference(name: str, n: int) -> None:
    rng = np.random.default_rng(100 + n)
    cell, inv, pbc = _kernel_cell(CELLS[name])
    positions = rng.uniform(0, 7, size=(n, 3))
    got = _kernels._closest_pair(positions, cell, inv, pbc)
    d, i, j = reference.closest_pair(positions, CELLS[name], pbc)
    assert got[0] == pytest.approx(d, rel=1e-12)
    assert (int(got[1]), int(got[2])) == (i, j)


def test_kinetic_energy_matches_reference() -> None:
    rng = np.random.default_rng(7)
    v = rng.normal(size=(64, 3))
    m = rng.uniform(1, 200, size=64)
    assert _kernels._kinetic_energy(v, m) == pytest.approx(
        reference.kinetic_energy(v, m), rel=1e-12
    )
