"""Atomic numbers for streams that do not carry them (IMD sends positions only).

Two ways to say what the atoms are: an element spec (``"Ar*256"``, ``"Cu*200,Ag*56"``,
``"(O,H,H)*100"`` for a repeated group) or a topology file in atom order: ``.xyz``/``.extxyz``
(the first frame's symbols), ``.pdb`` (element columns, else the atom name), or a LAMMPS
data file (``.data``, ``.lmp``: atom types by ID, named by ``types`` or by their masses).

>>> numbers_from_spec("O,H,H").tolist()
[8, 1, 1]
>>> numbers_from_spec("Cu*2,Ag").tolist()
[29, 29, 47]
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from trajwatch.elements import ATOMIC_NUMBERS

__all__ = ["numbers_from_file", "numbers_from_spec", "parse_types"]


def _z(symbol: str) -> int:
    z = ATOMIC_NUMBERS.get(symbol.strip().capitalize())
    if z is None:
        raise ValueError(f"unknown element {symbol.strip()!r}")
    return z


def numbers_from_spec(spec: str) -> NDArray[np.int32]:
    """Atomic numbers from a spec: comma-separated ``Symbol*N`` or ``(A,B,...)*N`` items.

    >>> numbers_from_spec("(O,H,H)*2,Na").tolist()
    [8, 1, 1, 8, 1, 1, 11]
    """
    text = spec.replace(" ", "")
    numbers: list[int] = []
    position = 0
    while position < len(text):
        match = _ITEM.match(text, position)
        if match is None:
            raise ValueError(
                f"bad element spec {spec!r} at {text[position:]!r}: expected items like "
                "Ar*500 or (O,H,H)*216, separated by commas"
            )
        group, symbol, count = match.group("group", "symbol", "count")
        items = group.split(",") if group is not None else [symbol]
        numbers += [_z(s) for s in items] * (int(count) if count else 1)
        position = match.end()
        if position < len(text):
            if text[position] != ",":
                raise ValueError(f"bad element spec {spec!r}: expected ',' at {text[position:]!r}")
            position += 1
    if not numbers:
        raise ValueError("empty element spec")
    return np.array(numbers, dtype=np.int32)


_ITEM = re.compile(
    r"(?:\((?P<group>[A-Za-z]+(?:,[A-Za-z]+)*)\)|(?P<symbol>[A-Za-z]+))"
    r"(?:\*(?P<count>\d+))?"
)


def parse_types(text: str) -> dict[int, str]:
    """``"1=Ar,2=O"`` -> ``{1: "Ar", 2: "O"}`` (LAMMPS atom type -> element).

    >>> parse_types("1=Ar, 2=O")
    {1: 'Ar', 2: 'O'}
    """
    table: dict[int, str] = {}
    for item in text.replace(" ", "").split(","):
        key, sep, symbol = item.partition("=")
        if not sep or not key.isdigit():
            raise ValueError(f"bad type mapping {item!r}: expected TYPE=Element, e.g. 1=Ar")
        _z(symbol)
        table[int(key)] = symbol
    return table


def numbers_from_file(
    path: str | Path, types: Mapping[int, str] | None = None
) -> NDArray[np.int32]:
    """Atomic numbers in atom order from an xyz/extxyz, PDB or LAMMPS data file."""
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()
    if suffix in (".xyz", ".extxyz"):
        return _from_xyz(path)
    if suffix in (".pdb", ".ent"):
        return _from_pdb(path)
    if suffix in (".data", ".lmp", ".lammps"):
        return _from_lammps_data(path, types)
    raise ValueError(
        f"cannot read atomic numbers from {path.name}: use .xyz/.extxyz, .pdb or a "
        "LAMMPS data file (.data, .lmp), or give --elements"
    )


def _from_xyz(path: Path) -> NDArray[np.int32]:
    with open(path, encoding="utf-8") as f:
        first = f.readline().split()
        if not first or not first[0].isdigit():
            raise ValueError(f"{path.name}: the first line must be the atom count")
        n = int(first[0])
        f.readline()  # comment / extxyz info line
        numbers = []
        for i in range(n):
            fields = f.readline().split()
            if not fields:
                raise ValueError(f"{path.name}: first frame ends after {i} of {n} atoms")
            token = fields[0]
            numbers.append(int(token) if token.isdigit() else _z(token))
    return np.array(numbers, dtype=np.int32)


def _from_pdb(path: Path) -> NDArray[np.int32]:
    numbers = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("ENDMDL"):
                break
            if not line.startswith(("ATOM  ", "HETATM")):
                continue
            element = line[76:78].strip()
            if not element:  # old files: the element leads the atom name
                element = re.sub(r"[^A-Za-z]", "", line[12:16])[:1]
            numbers.append(_z(element))
    if not numbers:
        raise ValueError(f"{path.name}: no ATOM/HETATM records")
    return np.array(numbers, dtype=np.int32)


def _from_lammps_data(path: Path, types: Mapping[int, str] | None) -> NDArray[np.int32]:
    from trajwatch.adapters.lammps import numbers_from_masses

    sections = _data_sections(path)
    if "Atoms" not in sections:
        raise ValueError(f"{path.name}: no Atoms section")
    style = sections["Atoms"][0]
    # atom-ID, then (molecule-ID for molecular styles), then type
    type_column = 2 if style in ("full", "molecular", "bond", "angle", "template") else 1
    ids_types = sorted(
        (int(fields[0]), int(fields[type_column])) for fields in sections["Atoms"][1]
    )
    by_type: dict[int, int] = {}
    if types is not None:
        by_type = {int(t): _z(symbol) for t, symbol in types.items()}
    elif "Masses" in sections:
        masses = {int(f[0]): float(f[1]) for f in sections["Masses"][1]}
        keys = sorted(masses)
        found = numbers_from_masses(np.array([masses[k] for k in keys]))
        by_type = dict(zip(keys, found.tolist(), strict=True))
    missing = sorted({t for _, t in ids_types} - set(by_type))
    if missing:
        raise ValueError(f"{path.name}: no element for atom type(s) {missing}: give --types")
    return np.array([by_type[t] for _, t in ids_types], dtype=np.int32)


_SECTIONS = frozenset(
    [
        "Masses",
        "Atoms",
        "Velocities",
        "Bonds",
        "Angles",
        "Dihedrals",
        "Impropers",
        "Pair",
        "PairIJ",
        "Bond",
        "Angle",
        "Dihedral",
        "Improper",
        "Ellipsoids",
        "Lines",
        "Triangles",
        "Bodies",
    ]
)


def _data_sections(path: Path) -> dict[str, tuple[str, list[list[str]]]]:
    """Body lines of each section of a LAMMPS data file, with the section's style comment."""
    sections: dict[str, tuple[str, list[list[str]]]] = {}
    current: list[list[str]] | None = None
    with open(path, encoding="utf-8") as f:
        f.readline()  # title
        for raw in f:
            line, _, comment = raw.partition("#")
            fields = line.split()
            if not fields:
                continue
            if fields[0] in _SECTIONS and len(fields) <= 2:
                current = []
                sections[" ".join(fields)] = (comment.strip(), current)
                continue
            if current is not None and fields[0].lstrip("-").isdigit():
                current.append(fields)
    return sections
