"""Engine unit systems and their factors to trajwatch's units (Å, fs, Å/fs, eV/Å, eV, amu).

A :class:`UnitSystem` holds one multiplier per quantity: an engine value times the factor
is the value in trajwatch's units. The LAMMPS styles follow the LAMMPS ``units`` page (SI
definitions, CODATA 2018 constants); ``lj`` needs the σ, ε and mass it was reduced by.
The IMDv3 profiles say what each engine actually puts on an IMD socket (see
``docs/engines.md``).

>>> metal = lammps_units("metal")
>>> metal.time, round(metal.velocity, 6), metal.energy  # ps -> fs, Å/ps -> Å/fs, eV
(1000.0, 0.001, 1.0)
>>> round(imd_units("gromacs").force, 8)  # kJ/(mol·Å) -> eV/Å
0.01036427
>>> round(lj_units(sigma=3.405, epsilon=0.0103, mass=39.948).time, 1)  # argon τ in fs
2158.8
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "IMD_PROFILES",
    "LAMMPS_STYLES",
    "TRAJWATCH",
    "UnitSystem",
    "imd_units",
    "lammps_units",
    "lj_units",
]

# SI values of trajwatch's units and of the constants the engines' units are built from
_AVOGADRO = 6.02214076e23
_EV = 1.602176634e-19  # J
_ANGSTROM = 1e-10  # m
_FS = 1e-15  # s
_AMU = 1e-3 / _AVOGADRO  # kg (g/mol per particle, as LAMMPS and GROMACS use it)
_ELECTRON_MASS = 9.1093837015e-31  # kg
_BOHR = 5.29177210903e-11  # m
_HARTREE = 4.3597447222071e-18  # J
_ATOMIC_TIME = 2.4188843265857e-17  # s
_KCAL_PER_MOL = 4184.0 / _AVOGADRO  # J (thermochemical calorie)
_KJ_PER_MOL = 1000.0 / _AVOGADRO  # J


@dataclass(frozen=True)
class UnitSystem:
    """Factors that turn an engine's values into trajwatch's units (multiply)."""

    name: str
    length: float
    """-> Å"""
    time: float
    """-> fs"""
    velocity: float
    """-> Å/fs"""
    force: float
    """-> eV/Å"""
    energy: float
    """-> eV"""
    mass: float
    """-> amu"""

    @classmethod
    def from_si(
        cls,
        name: str,
        *,
        length: float,
        time: float,
        energy: float,
        mass: float,
        velocity: float | None = None,
        force: float | None = None,
    ) -> UnitSystem:
        """A unit system from the SI size of its units (velocity and force derived if None)."""
        velocity = length / time if velocity is None else velocity
        force = energy / length if force is None else force
        return cls(
            name,
            length=_clean(length / _ANGSTROM),
            time=_clean(time / _FS),
            velocity=_clean(velocity / (_ANGSTROM / _FS)),
            force=_clean(force / (_EV / _ANGSTROM)),
            energy=_clean(energy / _EV),
            mass=_clean(mass / _AMU),
        )


def _clean(factor: float) -> float:
    """15 significant digits: 1e-12 / 1e-15 is 1000.0, not 999.9999999999999."""
    return float(f"{factor:.15g}")


TRAJWATCH = UnitSystem("trajwatch", 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)

#: LAMMPS ``units`` styles with physical units (``lj`` is reduced: see :func:`lj_units`).
LAMMPS_STYLES: dict[str, UnitSystem] = {
    "real": UnitSystem.from_si(
        "lammps:real", length=_ANGSTROM, time=_FS, energy=_KCAL_PER_MOL, mass=_AMU
    ),
    "metal": UnitSystem.from_si(
        "lammps:metal", length=_ANGSTROM, time=1e-12, energy=_EV, mass=_AMU
    ),
    "si": UnitSystem.from_si("lammps:si", length=1.0, time=1.0, energy=1.0, mass=1.0),
    "cgs": UnitSystem.from_si("lammps:cgs", length=1e-2, time=1.0, energy=1e-7, mass=1e-3),
    # electron: time in fs, but velocities in Bohr per "electron atomic time unit"
    # (the atomic unit of time scaled by sqrt(amu / m_e), 1.03275e-15 s)
    "electron": UnitSystem.from_si(
        "lammps:electron",
        length=_BOHR,
        time=_FS,
        energy=_HARTREE,
        mass=_AMU,
        velocity=_BOHR / (_ATOMIC_TIME * math.sqrt(_AMU / _ELECTRON_MASS)),
    ),
    "micro": UnitSystem.from_si("lammps:micro", length=1e-6, time=1e-6, energy=1e-15, mass=1e-15),
    "nano": UnitSystem.from_si("lammps:nano", length=1e-9, time=1e-9, energy=1e-21, mass=1e-21),
}


def lj_units(sigma: float, epsilon: float, mass: float) -> UnitSystem:
    """LAMMPS ``units lj`` for a system reduced by σ (Å), ε (eV) and a mass (amu).

    τ = σ·sqrt(m/ε); velocities are σ/τ, forces ε/σ.
    """
    if sigma <= 0 or epsilon <= 0 or mass <= 0:
        raise ValueError("sigma, epsilon and mass must be positive")
    tau = sigma * _ANGSTROM * math.sqrt(mass * _AMU / (epsilon * _EV))  # s
    return UnitSystem.from_si(
        "lammps:lj",
        length=sigma * _ANGSTROM,
        time=tau,
        energy=epsilon * _EV,
        mass=mass * _AMU,
    )


def lammps_units(style: str, lj: tuple[float, float, float] | None = None) -> UnitSystem:
    """The unit system of a LAMMPS ``units`` style; ``lj`` needs ``(σ Å, ε eV, mass amu)``."""
    if style == "lj":
        if lj is None:
            raise ValueError(
                "LAMMPS 'units lj' is reduced: give the sigma (Å), epsilon (eV) and mass "
                "(amu) it was reduced by, e.g. argon lj=(3.405, 0.0103, 39.948)"
            )
        return lj_units(*lj)
    try:
        return LAMMPS_STYLES[style]
    except KeyError:
        raise ValueError(
            f"unknown LAMMPS units style {style!r}; expected lj or one of {sorted(LAMMPS_STYLES)}"
        ) from None


#: What each engine sends over IMDv3. ``imdv3`` is the specification's fixed set (Å, ps,
#: Å/ps, kJ/(mol·Å), kJ/mol), which GROMACS follows; NAMD sends kcal/mol energies and
#: forces; LAMMPS sends its own ``units`` style unconverted (``lammps:<style>``).
IMD_PROFILES: dict[str, UnitSystem] = {
    "imdv3": UnitSystem.from_si(
        "imdv3", length=_ANGSTROM, time=1e-12, energy=_KJ_PER_MOL, mass=_AMU
    ),
    "gromacs": UnitSystem.from_si(
        "gromacs", length=_ANGSTROM, time=1e-12, energy=_KJ_PER_MOL, mass=_AMU
    ),
    "namd": UnitSystem.from_si(
        "namd", length=_ANGSTROM, time=1e-12, energy=_KCAL_PER_MOL, mass=_AMU
    ),
}


def imd_units(engine: str, lj: tuple[float, float, float] | None = None) -> UnitSystem:
    """Units of an IMDv3 stream: ``gromacs``, ``namd``, ``imdv3`` or ``lammps:<style>``.

    >>> imd_units("lammps:real").velocity  # Å/fs already
    1.0
    """
    name = engine.lower()
    if name.startswith("lammps:"):
        return lammps_units(name.split(":", 1)[1], lj)
    if name == "lammps":
        raise ValueError("LAMMPS sends its own units: say which, e.g. lammps:metal or lammps:real")
    try:
        return IMD_PROFILES[name]
    except KeyError:
        choices = ", ".join([*IMD_PROFILES, "lammps:<style>"])
        raise ValueError(f"unknown IMD engine {engine!r}; expected one of {choices}") from None
