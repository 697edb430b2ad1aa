"""ASE: ``Atoms`` to :class:`~trajwatch.frame.Frame`, and an observer for ``dyn.attach``.

ASE keeps velocities in Å per ASE time unit; trajwatch uses Å/fs. The observer reads
what the step has already computed (energy and forces are cached by the calculator), so
it adds no force evaluation.

>>> from ase.build import bulk
>>> frame = frame_from_atoms(bulk("Cu", cubic=True), step=3, time=6.0, source="cu")
>>> frame.n_atoms, frame.step, frame.has_cell, frame.velocities is None
(4, 3, True, True)

Publishing, or watching in-process and stopping on alarm (``AlarmStop`` is raised out of
``dyn.run`` once the step that raised the alarm has completed):

>>> from ase.calculators.emt import EMT
>>> from ase.md.verlet import VelocityVerlet
>>> from trajwatch.adapters.inprocess import Watch
>>> atoms = bulk("Cu", cubic=True).repeat(2)
>>> atoms.calc = EMT()
>>> dyn = VelocityVerlet(atoms, timestep=0.2)  # ASE time units
>>> watch = Watch()
>>> observer = AseObserver(dyn, watch, source="cu")
>>> dyn.attach(observer, interval=1)
>>> _ = dyn.run(5)
>>> watch.frames, observer.sent  # step 0 and 5 steps
(6, 6)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trajwatch.adapters.inprocess import FrameTarget, stop_event
from trajwatch.frame import Frame
from trajwatch.units import ASE_TIME_IN_FS

__all__ = ["AseObserver", "frame_from_atoms"]


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
            forces = np.array(atoms.get_forces(), dtype=np.float64)
    cell = np.array(atoms.cell.array, dtype=np.float64)
    pbc = np.array(atoms.pbc, dtype=bool)
    has_cell = bool(np.abs(cell).sum() > 0)
    # copy=False: every array below is a fresh copy (never the live atoms.positions)
    return Frame(
        np.array(atoms.positions, dtype=np.float64),
        np.array(atoms.numbers, dtype=np.int32),
        velocities=velocities,
        forces=forces,
        energy=energy,
        cell=cell if has_cell else None,
        pbc=pbc if has_cell else None,
        step=step,
        time=time,
        seq=seq,
        source=source,
        copy=False,
    )


class AseObserver:
    """An observer for ASE dynamics: ``dyn.attach(AseObserver(dyn, target), interval=1)``.

    Each call sends the current state as a Frame (``step`` = ``dyn.nsteps``, ``time`` in fs)
    to ``target``: a :class:`~trajwatch.streaming.Publisher` (publish to a monitor) or a
    :class:`~trajwatch.adapters.inprocess.Watch` (detect in this process). When the target
    asks to stop (a Watch after an alarm), the observer raises
    :class:`~trajwatch.adapters.inprocess.AlarmStop` out of ``dyn.run``; with
    ``raise_on_alarm=False`` it does not, and your loop checks ``watch.stop_requested``
    (e.g. ``for _ in dyn.irun(n): if watch.stop_requested: break``).
    """

    def __init__(
        self,
        dyn: Any,
        target: FrameTarget,
        *,
        source: str = "ase",
        raise_on_alarm: bool = True,
    ) -> None:
        self.dyn = dyn
        self.target = target
        self.source = source
        self.raise_on_alarm = raise_on_alarm
        self.sent = 0

    def __call__(self) -> None:
        dyn = self.dyn
        atoms = dyn.atoms
        if not hasattr(atoms, "numbers"):  # a filter wrapping the atoms
            atoms = atoms.atoms
        get_time = getattr(dyn, "get_time", None)
        frame = frame_from_atoms(
            atoms,
            step=int(dyn.nsteps),
            time=None if get_time is None else float(get_time()) * ASE_TIME_IN_FS,
            seq=self.sent,
            source=self.source,
        )
        self.target.send(frame)
        self.sent += 1
        if self.raise_on_alarm:
            stop = stop_event(self.target)
            if stop is not None:
                raise stop
