"""ASE ``Atoms`` to :class:`~trajwatch.frame.Frame`.

ASE keeps velocities in Å per ASE time unit; trajwatch uses Å/fs.

>>> from ase.build import bulk
>>> frame = frame_from_atoms(bulk("Cu", cubic=True), step=3, time=6.0, source="cu")
>>> frame.n_atoms, frame.step, frame.has_cell, frame.velocities is None
(4, 3, True, True)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trajwatch.frame import Frame
from trajwatch.units import ASE_TIME_IN_FS

__all__ = ["frame_from_atoms"]


def frame_from_atoms(
    atoms: Any,
    *,
    step: int = 0,
    time: float | None = None,
    seq: int = 0,
    source: str = "",
) -> Frame:
    """Snapshot an ASE ``Atoms`` (energy and forces only if its calculator has them)."""
    velocities = None
    if atoms.has("momenta"):
        velocities = atoms.get_velocities() / ASE_TIME_IN_FS
    energy = forces = None
    calc = atoms.calc
    if calc is not None:
        results = calc.results
        if "energy" in results and not calc.check_state(atoms):
            energy = float(results["energy"])
            if "forces" in results:
                forces = np.array(results["forces"], dtype=np.float64)
        else:
            energy = float(atoms.get_potential_energy())
            forces = atoms.get_forces()
    cell = np.array(atoms.cell.array, dtype=np.float64)
    pbc = np.array(atoms.pbc, dtype=bool)
    has_cell = bool(np.abs(cell).sum() > 0)
    return Frame(
        atoms.positions,
        atoms.numbers,
        velocities=velocities,
        forces=forces,
        energy=energy,
        cell=cell if has_cell else None,
        pbc=pbc if has_cell else None,
        step=step,
        time=time,
        seq=seq,
        source=source,
    )
