"""Real MD runs with ASE's EMT potential, with faults injected into the running simulation.

Used by the tests, the benchmarks and ``trajwatch demo``; needs ``ase`` (``pip install
trajwatch[md]``). A fault changes the simulation itself at ``fault_frame`` (the recorded
frame index), so what trajwatch sees afterwards is what the engine really produced.

=========== =========================================================== ========
fault       what happens at ``fault_frame``                              kind
=========== =========================================================== ========
clash       one atom is pushed to 0.9 Å of its nearest neighbour          abrupt
kick        one atom gets a velocity worth 5 eV of kinetic energy          abrupt
dt          the timestep grows ``dt_factor`` (20) fold: the integrator    abrupt
            blows up within a few steps
potential   EMT is swapped for a Lennard-Jones potential that is wrong     abrupt
frozen      the engine keeps emitting the same frame                      abrupt
nan         positions turn to NaN (a crashed force evaluation)             abrupt
thermostat  the thermostat turns into a runaway velocity rescaler:        gradual
            friction off, momenta x ``runaway_rate`` (1.01) per step
heat        the thermostat target ramps linearly to ``heat_factor`` (6)   gradual
            times the start temperature (past the melting point)
degrade     the forces are mixed, more every frame, with a wrong          gradual
            Lennard-Jones force field (a drifting ML potential)
=========== =========================================================== ========

The ramps of ``heat`` and ``degrade`` last ``ramp_frames`` frames (default: the rest of the
run).

``potential="lj-cu"`` runs the whole trajectory, equilibration included, under a
Lennard-Jones fit to copper instead of EMT: a stand-in for a broken ML force field that
is stable and looks like copper (fcc, nearly the same lattice constant, energy shifted to
agree with EMT at the start) but has the wrong stiffness, so the dynamics are off.

>>> frames = list(run_md(MDSpec(steps=5, repeat=2)))
>>> len(frames), frames[0].n_atoms, frames[-1].step
(5, 32, 4)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trajwatch.adapters.ase import frame_from_atoms
from trajwatch.frame import Frame

__all__ = [
    "ABRUPT_FAULTS",
    "FAULTS",
    "GRADUAL_FAULTS",
    "POTENTIALS",
    "MDSpec",
    "run_md",
    "write_with_ase",
]

ABRUPT_FAULTS = ("clash", "kick", "dt", "potential", "frozen", "nan")
GRADUAL_FAULTS = ("thermostat", "heat", "degrade")
FAULTS = ABRUPT_FAULTS + GRADUAL_FAULTS
POTENTIALS = ("emt", "lj-cu")

_LATTICE = {
    "Cu": "fcc",
    "Ag": "fcc",
    "Au": "fcc",
    "Ni": "fcc",
    "Pd": "fcc",
    "Pt": "fcc",
    "Al": "fcc",
}


@dataclass(frozen=True)
class MDSpec:
    """One MD run: an fcc metal supercell under EMT, recorded every ``interval`` steps."""

    element: str = "Cu"
    repeat: int | tuple[int, int, int] = 3
    """Cubic cells per axis (4 atoms each), or three counts for a rectangular supercell."""
    temperature: float = 300.0
    timestep_fs: float = 2.0
    steps: int = 300
    interval: int = 1
    thermostat: str = "langevin"
    friction_per_fs: float = 0.02
    equilibrate_steps: int = 100
    seed: int = 0
    fault: str | None = None
    fault_frame: int = 150
    source: str = ""
    dt_factor: float = 20.0
    runaway_rate: float = 1.01
    heat_factor: float = 6.0
    ramp_frames: int | None = None
    potential: str = "emt"
    """The force field of the whole run: ``emt``, or ``lj-cu`` (a wrong one, see above)."""

    def __post_init__(self) -> None:
        if self.element not in _LATTICE:
            raise ValueError(
                f"element {self.element!r} has no EMT parameters; use one of {sorted(_LATTICE)}"
            )
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}; expected one of {FAULTS}")
        if self.potential not in POTENTIALS:
            raise ValueError(f"potential must be one of {POTENTIALS}, not {self.potential!r}")
        if self.thermostat not in ("langevin", "nve"):
            raise ValueError(f"thermostat must be 'langevin' or 'nve', not {self.thermostat!r}")


def run_md(spec: MDSpec) -> Iterator[Frame]:
    """Yield ``spec.steps`` recorded frames of a real EMT run (after equilibration)."""
    from ase import units
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.md.langevin import Langevin
    from ase.md.verlet import VelocityVerlet

    rng = np.random.default_rng(spec.seed)
    atoms = bulk(spec.element, _LATTICE[spec.element], cubic=True).repeat(spec.repeat)
    atoms.rattle(0.02, seed=spec.seed)
    atoms.calc = EMT()
    if spec.potential == "lj-cu":
        atoms.calc = _mixed(atoms, atoms.calc, _lj_copper())
        atoms.calc.weight = 1.0  # all wrong potential, energy offset to EMT's
    # Maxwell-Boltzmann at twice the target: equipartition halves it within ~100 fs.
    masses = atoms.get_masses()[:, None]
    momenta = rng.normal(size=(len(atoms), 3)) * np.sqrt(masses * units.kB * 2 * spec.temperature)
    atoms.set_momenta(momenta - masses * momenta.sum(axis=0) / masses.sum())

    def make_dynamics(timestep_fs: float, temperature: float) -> Any:
        if spec.thermostat == "nve":
            return VelocityVerlet(atoms, timestep_fs * units.fs)
        return Langevin(
            atoms,
            timestep_fs * units.fs,
            temperature_K=temperature,
            friction=spec.friction_per_fs / units.fs,
            fixcm=False,
            rng=rng,
        )

    dyn = make_dynamics(spec.timestep_fs, spec.temperature)
    dyn.run(spec.equilibrate_steps)
    ramp_frames = spec.ramp_frames or max(1, spec.steps - spec.fault_frame)
    source = spec.source or f"{spec.element}-{spec.fault or 'clean'}"
    timestep = spec.timestep_fs
    time = 0.0
    frozen: Frame | None = None
    for index in range(spec.steps):
        faulty = spec.fault is not None and index >= spec.fault_frame
        if faulty and index == spec.fault_frame:
            dyn = _inject(spec, atoms, dyn, rng, make_dynamics)
            if spec.fault == "dt":
                timestep = spec.timestep_fs * spec.dt_factor
        ramp = min(1.0, (index - spec.fault_frame) / ramp_frames) if faulty else 0.0
        if faulty and spec.fault == "heat":
            dyn.set_temperature(
                temperature_K=spec.temperature * (1 + (spec.heat_factor - 1) * ramp)
            )
        if faulty and spec.fault == "degrade":
            atoms.calc.weight = ramp
        if index > 0:
            if faulty and spec.fault == "thermostat":
                for _ in range(spec.interval):
                    atoms.set_momenta(atoms.get_momenta() * spec.runaway_rate)
                    dyn.run(1)
            else:
                dyn.run(spec.interval)
            time += timestep * spec.interval
        frame = frame_from_atoms(
            atoms, step=index * spec.interval, time=time, seq=index, source=source
        )
        if faulty and spec.fault == "frozen":
            frozen = frozen or frame
            frame = Frame(
                frozen.positions, frozen.numbers, velocities=frozen.velocities,
                forces=frozen.forces, energy=frozen.energy, cell=frozen.cell, pbc=frozen.pbc,
                step=frame.step, time=frame.time, seq=frame.seq, source=source,
            )  # fmt: skip
        if faulty and spec.fault == "nan":
            frame.positions[:] = math.nan
            frame.energy = math.nan
        yield frame


def _inject(
    spec: MDSpec, atoms: Any, dyn: Any, rng: np.random.Generator, make_dynamics: Any
) -> Any:
    """Change the running simulation; returns the dynamics object to continue with."""
    if spec.fault == "clash":
        i = int(rng.integers(len(atoms)))
        distances = atoms.get_distances(i, range(len(atoms)), mic=True, vector=True)
        lengths = np.linalg.norm(distances, axis=1)
        lengths[i] = np.inf
        j = int(np.argmin(lengths))
        atoms.positions[i] = atoms.positions[i] + distances[j] * (1 - 0.9 / lengths[j])
    elif spec.fault == "kick":
        i = int(rng.integers(len(atoms)))
        mass = atoms.get_masses()[i]
        direction = rng.normal(size=3)
        momenta = atoms.get_momenta()
        momenta[i] = direction / np.linalg.norm(direction) * math.sqrt(2 * mass * 5.0)
        atoms.set_momenta(momenta)
    elif spec.fault == "dt":
        dyn = make_dynamics(spec.timestep_fs * spec.dt_factor, spec.temperature)
    elif spec.fault == "thermostat":
        from ase import units
        from ase.md.verlet import VelocityVerlet

        dyn = VelocityVerlet(atoms, spec.timestep_fs * units.fs)
    elif spec.fault == "potential":
        atoms.calc = _wrong_potential()
    elif spec.fault == "degrade":
        atoms.calc = _mixed(atoms, atoms.calc, _wrong_potential())
    return dyn


def _wrong_potential() -> Any:
    """A Lennard-Jones potential whose minimum (2.24 Å) sits well inside an fcc metal's."""
    from ase.calculators.lj import LennardJones

    return LennardJones(sigma=2.0, epsilon=0.4, rc=5.0, smooth=True)


def _lj_copper() -> Any:
    """Lennard-Jones fitted to copper (Halicioglu & Pound 1975: epsilon 0.4093 eV,
    sigma 2.338 Å): fcc is stable near copper's lattice constant, but the elastic
    constants and vibrations are wrong."""
    from ase.calculators.lj import LennardJones

    return LennardJones(sigma=2.338, epsilon=0.4093, rc=5.0, smooth=True)


def _mixed(atoms: Any, good: Any, wrong: Any) -> Any:
    """(1 - w) * good + w * wrong, with ``weight`` w set from outside as the run goes.

    ``wrong`` is shifted to agree with ``good`` on the energy of ``atoms``, so the
    energy does not jump: only the forces, and through them the dynamics, degrade.
    """
    from ase.calculators.calculator import Calculator, all_changes

    probe = atoms.copy()
    probe.calc = good
    offset = probe.get_potential_energy()
    probe.calc = wrong
    offset -= probe.get_potential_energy()

    class Mixed(Calculator):
        implemented_properties = ["energy", "forces"]  # noqa: RUF012 (ASE's own type)

        def __init__(self) -> None:
            super().__init__()
            self.weight = 0.0

        def calculate(
            self,
            atoms: Any = None,
            properties: Any = ("energy",),
            system_changes: Any = all_changes,
        ) -> None:
            super().calculate(atoms, properties, system_changes)
            assert self.atoms is not None
            a = self.atoms.copy()
            w = self.weight
            e = f = 0.0
            for calc, share, shift in ((good, 1.0 - w, 0.0), (wrong, w, offset)):
                if share > 0:
                    a.calc = calc
                    e = e + share * (a.get_potential_energy() + shift)
                    f = f + share * a.get_forces()
            self.results = {"energy": e, "forces": np.asarray(f) + np.zeros((len(a), 3))}

    return Mixed()


def write_with_ase(frames: Iterable[Frame], path: str | Path) -> Path:
    """Write frames with ASE's own extxyz writer (velocities as momenta, energy, forces).

    Tests and benchmarks use it for files exactly as ASE writes them; trajwatch's own
    writer is :func:`trajwatch.replay.write_extxyz`.
    """
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    from trajwatch.units import ASE_TIME_IN_FS

    path = Path(path)
    images = []
    for frame in frames:
        atoms = Atoms(
            numbers=frame.numbers,
            positions=frame.positions,
            cell=frame.cell if frame.cell is not None else np.zeros((3, 3)),
            pbc=frame.pbc,
        )
        if frame.velocities is not None:
            atoms.set_velocities(frame.velocities * ASE_TIME_IN_FS)
        results: dict[str, Any] = {}
        if frame.energy is not None:
            results["energy"] = frame.energy
        if frame.forces is not None:
            results["forces"] = frame.forces
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        atoms.info["step"] = frame.step
        if frame.time is not None:
            atoms.info["time"] = frame.time
        images.append(atoms)
    write(path, images, format="extxyz")
    return path
