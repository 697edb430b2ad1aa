"""The streaming xyz/extxyz reader and writer (trajwatch.replay.xyz) and its kernels.

Real files only: EMT MD runs written by ASE, hand-written malformed files, and files our
own writer produced; ASE is the reference for what a frame contains.
"""

from __future__ import annotations

import bz2
import doctest
import gzip
import io
import json
import logging
import lzma
import math
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ase.io import read as ase_read
from ase.io import write as ase_write
from ase.io.extxyz import key_val_str_to_dict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trajwatch.adapters.ase import frame_from_atoms
from trajwatch.frame import Frame
from trajwatch.replay import (
    XYZFormatError,
    XYZReader,
    XYZWriter,
    _parse,
    iread,
    warmup,
    write_extxyz,
    xyz,
)
from trajwatch.simulate import MDSpec, run_md
from trajwatch.simulate import write_with_ase as ase_write_extxyz
from trajwatch.units import ASE_TIME_IN_FS

SRC = Path(__file__).resolve().parents[1] / "src"


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def md_frames() -> dict[int, list[Frame]]:
    """Real EMT MD frames (Langevin, so velocities, energies and forces all vary)."""
    return {
        32: list(run_md(MDSpec(steps=20, repeat=2, equilibrate_steps=5, seed=1))),
        108: list(run_md(MDSpec(steps=20, repeat=3, equilibrate_steps=5, seed=2))),
    }


def same_bits(a: Any, b: Any) -> bool:
    """Bit-identical float arrays (any NaN matches any NaN)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return False
    both_nan = np.isnan(a) & np.isnan(b)
    return bool(np.all(both_nan | (a.view(np.uint64) == b.view(np.uint64))))


def assert_matches_ase(frames: list[Frame], path: Path, **read_kwargs: Any) -> None:
    images = ase_read(path, index=":", **read_kwargs)
    assert len(frames) == len(images)
    for frame, atoms in zip(frames, images, strict=True):
        ref = frame_from_atoms(atoms)
        assert same_bits(frame.positions, ref.positions)
        np.testing.assert_array_equal(frame.numbers, ref.numbers)
        np.testing.assert_array_equal(frame.pbc, ref.pbc)
        for name in ("cell", "forces", "velocities"):
            mine, theirs = getattr(frame, name), getattr(ref, name)
            assert (mine is None) == (theirs is None), name
            if mine is not None:
                assert same_bits(mine, theirs), name
        assert frame.energy == ref.energy


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def error_of(path: Path) -> XYZFormatError:
    with pytest.raises(XYZFormatError) as info:
        list(iread(path))
    return info.value


def assert_same_info(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            np.testing.assert_array_equal(x, y)
            assert np.asarray(x).dtype.kind == np.asarray(y).dtype.kind
        else:
            assert x == y and type(x) is type(y), key


# --------------------------------------------------------------------------------------
# agreement with ASE on files ASE writes
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_atoms", [32, 108])
def test_extxyz_written_by_ase_matches_ase(
    tmp_path: Path, md_frames: dict[int, list[Frame]], n_atoms: int
) -> None:
    path = ase_write_extxyz(md_frames[n_atoms], tmp_path / "md.extxyz")
    frames = list(iread(path))
    assert_matches_ase(frames, path)
    # and what ASE read is what the simulation produced (to the 8 decimals ASE writes)
    for frame, original in zip(frames, md_frames[n_atoms], strict=True):
        np.testing.assert_allclose(frame.positions, original.positions, atol=1e-8)
        assert frame.velocities is not None and original.velocities is not None
        np.testing.assert_allclose(frame.velocities, original.velocities, atol=1e-8)
        assert frame.step == original.step and frame.time == original.time
        assert frame.info == {}


def test_step_time_seq_source(tmp_path: Path, md_frames: dict[int, list[Frame]]) -> None:
    path = ase_write_extxyz(md_frames[32], tmp_path / "run.7.extxyz")
    frames = list(iread(path))
    assert [f.seq for f in frames] == list(range(20))
    assert [f.step for f in frames] == [f.step for f in md_frames[32]]
    assert [f.time for f in frames] == [f.time for f in md_frames[32]]
    assert {f.source for f in frames} == {"run.7"}
    assert {f.source for f in iread(path, source="cu")} == {"cu"}
    plain = write_text(tmp_path / "nostep.xyz", "1\n\nH 0 0 0\n" * 3)
    assert [(f.step, f.seq, f.time, f.energy) for f in iread(plain)] == [
        (0, 0, None, None), (1, 1, None, None), (2, 2, None, None),
    ]  # fmt: skip


def test_plain_xyz_with_ten_or_more_atoms_matches_ase(
    tmp_path: Path, md_frames: dict[int, list[Frame]]
) -> None:
    from ase import Atoms

    images = [Atoms(numbers=f.numbers, positions=f.positions) for f in md_frames[108][:5]]
    path = tmp_path / "plain.xyz"
    ase_write(path, images, format="xyz")  # '%22.15f', comment line empty
    frames = list(iread(path))
    assert [f.n_atoms for f in frames] == [108] * 5
    assert_matches_ase(frames, path, format="xyz")
    assert all(f.cell is None and not f.pbc.any() for f in frames)


def test_plain_xyz_atomic_numbers_extra_columns_and_comment(tmp_path: Path) -> None:
    rows = "".join(f"{z} {z}.5 -{z}.25 1e-{z} extra {z * 7}\n" for z in range(1, 13))
    path = write_text(tmp_path / "numbers.xyz", f"12\nframe one of many\n{rows}" * 2)
    frames = list(iread(path))
    assert len(frames) == 2
    np.testing.assert_array_equal(frames[1].numbers, np.arange(1, 13))
    assert frames[0].positions[11].tolist() == [12.5, -12.25, 1e-12]
    assert frames[0].info == {"comment": "frame one of many"}


def test_symbols_are_case_insensitive_as_in_ase(tmp_path: Path) -> None:
    path = write_text(tmp_path / "case.xyz", "4\n\ncu 0 0 0\nCU 1 0 0\nX 2 0 0\nog 3 0 0\n")
    assert next(iread(path)).numbers.tolist() == [29, 29, 0, 118]


def test_info_values_parsed_like_ase(tmp_path: Path) -> None:
    comment = (
        'Properties=species:S:1:pos:R:3 a=1 b=2.5 c=T d="1 2 3" e="1.5 2 3" f="T F T" '
        'g=hello h="two words" i={4 5} j=1e3 k stress="1 2 3 4 5 6 7 8 9" '
        'l="_JSON {\\"x\\": [1, 2]}" m=[1,2]'
    )
    path = write_text(tmp_path / "info.extxyz", f"1\n{comment}\nH 0 0 0\n")
    info = next(iread(path)).info
    ase_info = key_val_str_to_dict(comment)
    del ase_info["Properties"]
    assert info.keys() == ase_info.keys()
    for key, value in ase_info.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(info[key], value)
        else:
            assert info[key] == value, key
    assert type(info["a"]) is int and type(info["b"]) is float and info["c"] is True
    assert info["stress"].shape == (3, 3) and info["stress"][0, 1] == 4  # Fortran order


def test_energy_falls_back_to_free_energy(tmp_path: Path) -> None:
    text = "1\nfree_energy=-2.5\nH 0 0 0\n1\nenergy=-1.0 free_energy=-2.5\nH 0 0 0\n1\n\nH 0 0 0\n"
    frames = list(iread(write_text(tmp_path / "e.xyz", text)))
    assert [f.energy for f in frames] == [-2.5, -1.0, None]
    assert frames[1].info == {"free_energy": -2.5}


@pytest.mark.parametrize(
    ("column", "values", "expected"),
    [
        ("momenta", "1.0 2.0 -3.0", np.array([1.0, 2.0, -3.0]) / 2.0 / ASE_TIME_IN_FS),
        ("velocities", "1.0 2.0 -3.0", np.array([1.0, 2.0, -3.0]) / ASE_TIME_IN_FS),
        ("vel", "1.0 2.0 -3.0", np.array([1.0, 2.0, -3.0])),
        ("velo", "1.0 2.0 -3.0", np.array([1.0, 2.0, -3.0])),
    ],
)
def test_velocity_columns_and_units(
    tmp_path: Path, column: str, values: str, expected: np.ndarray
) -> None:
    props = f"species:S:1:pos:R:3:{column}:R:3:masses:R:1"
    path = write_text(tmp_path / "v.extxyz", f"1\nProperties={props}\nH 0 0 0 {values} 2.0\n")
    velocities = next(iread(path)).velocities
    assert velocities is not None
    assert same_bits(velocities[0], expected)


def test_momenta_of_a_massless_atom_are_nan_velocities(tmp_path: Path) -> None:
    # a zero mass in the file (found by fuzzing: it was a ZeroDivisionError)
    text = (
        "2\nProperties=species:S:1:pos:R:3:momenta:R:3:masses:R:1\n"
        "Ar 1 2 0 3 0 4 0\nAr 0 0 0 1 1 1 39.9\n"
    )
    frame = next(iread(write_text(tmp_path / "m.extxyz", text)))
    assert frame.velocities is not None
    assert np.isnan(frame.velocities[0]).all() and np.isfinite(frame.velocities[1]).all()


def test_z_column_and_ignored_columns(tmp_path: Path) -> None:
    props = "species:S:1:pos:R:3:Z:I:1:tags:I:1:label:S:1:fixed:L:3:forces:R:3"
    text = f"2\nProperties={props}\nFoo 0 0 0 6 1 a T F T 0.5 0 0\nBar 1 1 1 8 2 b F F F 0 0 -1\n"
    frame = next(iread(write_text(tmp_path / "z.extxyz", text)))
    assert frame.numbers.tolist() == [6, 8]
    assert frame.forces is not None and frame.forces.tolist() == [[0.5, 0, 0], [0, 0, -1]]
    assert frame.velocities is None


def test_lattice_and_pbc(tmp_path: Path) -> None:
    text = (
        '1\nLattice="1 2 3 4 5 6 7 8 9.5"\nH 0 0 0\n'
        '1\nLattice="3 0 0 0 3 0 0 0 3" pbc="T F T"\nH 0 0 0\n'
        '1\npbc="F F F"\nH 0 0 0\n'
        "1\nLattice={2 3 4}\nH 0 0 0\n"
    )
    a, b, c, d = iread(write_text(tmp_path / "cell.extxyz", text))
    assert a.cell is not None and a.cell.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9.5]]
    assert a.pbc.tolist() == [True, True, True]
    assert b.pbc.tolist() == [True, False, True]
    assert c.cell is None and c.pbc.tolist() == [False, False, False]
    assert d.cell is not None and np.diag(d.cell).tolist() == [2, 3, 4]


def test_frames_hold_what_the_checking_constructor_would_give(tmp_path: Path) -> None:
    """The reader builds its Frames without Frame's checks: its arrays must pass them, and
    each frame owns its arrays, but for the read-only pbc flags and cell, which frames
    share while the comment line repeats them."""
    text = (
        '2\nLattice="3 0 0 0 3 0 0 0 3" Properties=species:S:1:pos:R:3:vel:R:3:forces:R:3'
        ' energy=-1.5 step=7 time=2.0 pbc="T F T" note=hi\n'
        "H 0 0 0 1 2 3 0.1 0.2 0.3\nO 1 1 1 4 5 6 0.4 0.5 0.6\n"
    ) * 2 + "1\nLattice={2 3 4}\nH 0 0 0\n1\nplain\nH 0 0 0\n"
    frames = list(iread(write_text(tmp_path / "f.extxyz", text)))
    for frame in frames:
        checked = Frame(
            frame.positions, frame.numbers, velocities=frame.velocities, forces=frame.forces,
            energy=frame.energy, cell=frame.cell, pbc=frame.pbc, step=frame.step,
            time=frame.time, seq=frame.seq, source=frame.source, info=frame.info,
        )  # fmt: skip
        for name in ("positions", "numbers", "velocities", "forces", "cell"):
            ours, theirs = getattr(frame, name), getattr(checked, name)
            if theirs is None:
                assert ours is None, name
                continue
            assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, name
            assert ours.flags.owndata and ours.flags.writeable == (name != "cell"), name
            assert ours.flags.c_contiguous, name
            np.testing.assert_array_equal(ours, theirs)
        assert frame.pbc.tolist() == checked.pbc.tolist()
        for name in ("energy", "step", "time", "seq", "source", "info"):
            assert getattr(frame, name) == getattr(checked, name), name
    first, second = frames[0], frames[1]
    assert first.cell is not None and second.cell is first.cell  # the same Lattice text
    assert frames[2].cell is not None and frames[2].cell is not first.cell
    np.testing.assert_array_equal(frames[2].cell, np.diag([2.0, 3.0, 4.0]))
    assert first.info == {"note": "hi"} and first.info is not second.info
    assert frames[2].pbc.tolist() == [True] * 3 and frames[3].pbc.tolist() == [False] * 3


def test_nan_positions_and_last_line_without_newline(tmp_path: Path) -> None:
    text = "2\n\nH nan -inf 1\nH 0 0 Infinity"
    frame = next(iread(write_text(tmp_path / "nan.xyz", text)))
    assert np.isnan(frame.positions[0, 0]) and frame.positions[0, 1] == -math.inf
    assert frame.positions[1, 2] == math.inf


def test_crlf_line_endings(tmp_path: Path) -> None:
    path = tmp_path / "dos.xyz"
    path.write_bytes(b"2\r\nenergy=1.5\r\nH 0 0 0\r\nH 0 0 0.74\r\n\r\n")
    (frame,) = iread(path)
    assert frame.energy == 1.5 and frame.positions[1, 2] == 0.74


def test_blank_lines_between_frames_count_for_line_numbers(tmp_path: Path) -> None:
    text = "1\n\nH 0 0 0\n\n\n1\n\nH 0 0 bad\n"
    error = error_of(write_text(tmp_path / "gaps.xyz", text))
    assert error.line == 8


# --------------------------------------------------------------------------------------
# compression and streaming
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "opener"),
    [(".xyz.gz", gzip.open), (".xyz.bz2", bz2.open), (".xyz.xz", lzma.open), (".xyz", gzip.open)],
)
def test_compressed_files_by_magic_bytes(
    tmp_path: Path, md_frames: dict[int, list[Frame]], suffix: str, opener: Any
) -> None:
    plain = ase_write_extxyz(md_frames[32], tmp_path / "md.extxyz")
    packed = tmp_path / f"packed{suffix}"  # the last case: gzip data named .xyz
    with opener(packed, "wb") as f:
        f.write(plain.read_bytes())
    frames = list(iread(packed))
    reference = list(iread(plain))
    assert len(frames) == len(reference) == 20
    for a, b in zip(frames, reference, strict=True):
        assert same_bits(a.positions, b.positions) and same_bits(a.forces, b.forces)
        assert a.energy == b.energy
    assert frames[0].source == "packed"


def test_first_frame_without_reading_the_whole_file(
    tmp_path: Path, md_frames: dict[int, list[Frame]]
) -> None:
    path = ase_write_extxyz(md_frames[108] * 20, tmp_path / "big.extxyz")  # 400 frames
    size = path.stat().st_size
    with open(path, "rb") as f:
        reader = XYZReader(f)
        first = next(reader)
        assert first.n_atoms == 108
        assert f.tell() < size / 20  # only the first chunk was read
        assert sum(1 for _ in reader) == 399


def test_frames_of_a_growing_file(tmp_path: Path, md_frames: dict[int, list[Frame]]) -> None:
    first = ase_write_extxyz(md_frames[32][:1], tmp_path / "one.extxyz").read_bytes()
    rest = ase_write_extxyz(md_frames[32][1:3], tmp_path / "two.extxyz").read_bytes()
    path = tmp_path / "growing.extxyz"
    path.write_bytes(first)
    with XYZReader(path) as reader:
        assert next(reader).seq == 0  # available although the writer is not done
        with pytest.raises(StopIteration):
            next(reader)
        with open(path, "ab") as f:
            f.write(rest)
        assert [frame.seq for frame in reader] == [1, 2]


def test_truncated_gzip_stream_is_an_error(
    tmp_path: Path, md_frames: dict[int, list[Frame]]
) -> None:
    plain = ase_write_extxyz(md_frames[32], tmp_path / "md.extxyz").read_bytes()
    packed = gzip.compress(plain)
    path = tmp_path / "cut.xyz.gz"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(XYZFormatError, match="decompress"):
        list(iread(path))
    reader = XYZReader(path, skip_bad=True)
    good = list(reader)
    assert 0 < len(good) < 20 and reader.bad_frames == 1
    reader.close()


# --------------------------------------------------------------------------------------
# malformed files
# --------------------------------------------------------------------------------------

GOOD = "2\nenergy=1.0\nH 0 0 0\nH 0 0 0.74\n"  # four lines

MALFORMED = [
    ("bad count line", "two\nc\nH 0 0 0\n", 1, "number of atoms"),
    ("negative count", "-1\nc\n", 1, "number of atoms"),
    ("count with junk", "2 atoms\nc\nH 0 0 0\nH 0 0 1\n", 1, "number of atoms"),
    ("count line swallows the next frame", "3\nc\nH 0 0 0\nH 0 0 1\n", 5, "columns"),
    ("too few columns", "1\nc\nH 0 0\n", 3, "columns"),
    ("blank atom line", "2\nc\nH 0 0 0\n\nH 0 0 1\n", 4, "columns"),
    ("too many columns", "1\nProperties=species:S:1:pos:R:3\nH 0 0 0 5\n", 3, "columns"),
    ("missing forces", "1\nProperties=species:S:1:pos:R:3:forces:R:3\nH 0 0 0 1 2\n", 3, "col"),
    ("unparsable number", "1\nc\nH 0 0 0.1.2\n", 3, "'0.1.2'"),
    ("fortran exponent", "1\nc\nH 0 0 1.0D+00\n", 3, "number"),
    ("unknown element", "1\nc\nXx 0 0 0\n", 3, "'Xx'"),
    ("unknown one-letter element", "1\nc\nQ 0 0 0\n", 3, "'Q'"),
    ("symbol with a digit", "1\nc\nC1 0 0 0\n", 3, "'C1'"),
    ("three-letter symbol", "1\nc\nCuu 0 0 0\n", 3, "'Cuu'"),
    ("symbol with a bracket", "1\nc\nC[ 0 0 0\n", 3, "'C['"),
    ("atomic number too large", "1\nc\n200 0 0 0\n", 3, "element"),
    ("lattice with 8 numbers", '1\nLattice="1 0 0 0 1 0 0 0"\nH 0 0 0\n', 2, "Lattice"),
    ("lattice non-number", '1\nLattice="1 0 0 0 x 0 0 0 1"\nH 0 0 0\n', 2, "Lattice"),
    ("lattice not finite", '1\nLattice="1 0 0 0 nan 0 0 0 1"\nH 0 0 0\n', 2, "Lattice"),
    ("nested lattice", "1\nLattice=[[1,0,0],[0,1,0],[0,0,1]]\nH 0 0 0\n", 2, "nested"),
    ("bad properties", "1\nProperties=species:S:1:pos:R:2\nH 0 0\n", 2, "pos"),
    ("no positions", "1\nProperties=species:S:1\nH\n", 2, "pos"),
    ("bad pbc", '1\npbc="T X T"\nH 0 0 0\n', 2, "pbc"),
    ("bad energy", "1\nenergy=low\nH 0 0 0\n", 2, "energy"),
    ("bad step", "1\nstep=1.5\nH 0 0 0\n", 2, "step"),
    ("unbalanced quote", '1\nProperties=species:S:1:pos:R:3 a="x\nH 0 0 0\n', 2, "comment"),
]


@pytest.mark.parametrize(
    ("case", "text", "line", "fragment"), MALFORMED, ids=[c[0] for c in MALFORMED]
)
def test_malformed_frame_raises_with_file_and_line(
    tmp_path: Path, case: str, text: str, line: int, fragment: str
) -> None:
    path = write_text(tmp_path / "bad.xyz", GOOD + text + GOOD)
    with pytest.raises(XYZFormatError) as info:
        list(iread(path))
    error = info.value
    assert isinstance(error, ValueError)
    assert error.path == str(path)
    assert error.line == line + 4  # after the good first frame
    assert error.frame == 1
    assert str(path) in str(error) and f"line {line + 4}" in str(error)
    assert fragment in error.reason


@pytest.mark.parametrize(
    ("case", "text", "line", "fragment"), MALFORMED, ids=[c[0] for c in MALFORMED]
)
def test_skip_bad_counts_and_resynchronises(
    tmp_path: Path,
    case: str,
    text: str,
    line: int,
    fragment: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = write_text(tmp_path / "bad.xyz", GOOD + text + GOOD.replace("1.0", "2.0"))
    with caplog.at_level(logging.WARNING, logger="trajwatch.replay"):
        reader = XYZReader(path, skip_bad=True)
        frames = list(reader)
    assert [f.energy for f in frames] == [1.0, 2.0]
    assert reader.bad_frames == 1
    assert [f.seq for f in frames] == [0, 2]  # the skipped frame keeps its index
    assert reader.frames == len(frames)
    assert len(reader.errors) == reader.bad_frames
    assert reader.errors[0].line == line + 4
    assert any("bad.xyz" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("2\n", 5, "the file ends after the count line"),
        ("2\nc", 5, "the file ends after 0"),
        ("3\nc\nH 0 0 0\nH 0 0 1\n", 5, "the file ends after 2"),
        ("3\nc\nH 0 0 0\nH 0 0 1", 5, "the file ends after 2"),
        ("1\nc\nH 0 0 0.5", None, ""),  # a complete frame without its last newline
    ],
)
def test_truncated_frame_at_the_end(
    tmp_path: Path, text: str, line: int | None, fragment: str
) -> None:
    path = write_text(tmp_path / "end.xyz", GOOD + text)
    if line is None:
        assert len(list(iread(path))) == 2
        return
    error = error_of(path)
    assert error.line == line and "truncated" in error.reason and fragment in error.reason
    reader = XYZReader(path, skip_bad=True)
    assert len(list(reader)) == 1 and reader.bad_frames == 1


def test_count_line_larger_than_the_frame_resyncs_at_next_count(tmp_path: Path) -> None:
    text = "5\nc\nH 0 0 0\nH 0 0 1\n" + GOOD + GOOD
    path = write_text(tmp_path / "over.xyz", text)
    error = error_of(path)
    assert error.line == 5 and "columns" in error.reason  # the next count line, as an atom
    reader = XYZReader(path, skip_bad=True)
    assert len(list(reader)) == 2 and reader.bad_frames == 1


def test_truncated_last_frame_skip_bad(tmp_path: Path) -> None:
    path = write_text(tmp_path / "cut.xyz", GOOD + GOOD + "2\nc\nH 0 0 0\n")
    reader = XYZReader(path, skip_bad=True)
    assert len(list(reader)) == 2
    assert reader.bad_frames == 1 and "truncated" in reader.errors[0].reason
    assert reader.errors[0].line == 9


def test_implausible_count_is_not_allocated(tmp_path: Path) -> None:
    error = error_of(write_text(tmp_path / "huge.xyz", "99999999999\nc\nH 0 0 0\n"))
    assert error.line == 1
    error = error_of(write_text(tmp_path / "big.xyz", "5000000\nc\nH 0 0 0\n"))
    assert "truncated" in error.reason


def test_binary_garbage_stops_with_an_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.xyz"
    path.write_bytes(GOOD.encode() + bytes(range(11, 256)) * 70000)  # no newline, 17 MB
    error = error_of(path)
    assert error.line == 5 and "line break" in error.reason
    reader = XYZReader(path, skip_bad=True)
    assert len(list(reader)) == 1 and reader.bad_frames == 1
    reader.close()
    with pytest.raises(ValueError, match="closed"):
        next(reader)


def test_text_mode_file_is_rejected(tmp_path: Path) -> None:
    path = write_text(tmp_path / "t.xyz", GOOD)
    with open(path) as f, pytest.raises(TypeError, match="binary"):
        XYZReader(f)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# writer
# --------------------------------------------------------------------------------------


def test_write_read_round_trip_of_md_frames(
    tmp_path: Path, md_frames: dict[int, list[Frame]]
) -> None:
    frames = md_frames[108]
    for frame in frames:
        frame.info = {"thermostat": "langevin", "target_K": 300.0, "flags": [True, False]}
    path = tmp_path / "dump.extxyz"
    assert write_extxyz(path, frames) == len(frames)
    back = list(iread(path))
    for a, b in zip(frames, back, strict=True):
        for name in ("positions", "forces", "cell"):
            assert same_bits(getattr(a, name), getattr(b, name)), name
        np.testing.assert_array_equal(a.numbers, b.numbers)
        np.testing.assert_array_equal(a.pbc, b.pbc)
        assert (a.energy, a.step, a.time) == (b.energy, b.step, b.time)
        assert a.velocities is not None and b.velocities is not None
        # written as ASE momenta: the unit conversion costs at most one ulp
        np.testing.assert_allclose(b.velocities, a.velocities, rtol=2.3e-16, atol=0)
        assert b.info == a.info
    # exact with the vel column (Å/fs)
    write_extxyz(path, frames, velocities="vel")
    for a, b in zip(frames, iread(path), strict=True):
        assert same_bits(a.velocities, b.velocities)


def test_ase_reads_what_we_write(tmp_path: Path, md_frames: dict[int, list[Frame]]) -> None:
    frames = md_frames[32]
    path = tmp_path / "dump.extxyz"
    write_extxyz(path, frames)
    images = ase_read(path, index=":")
    assert len(images) == len(frames)
    for frame, atoms in zip(frames, images, strict=True):
        ref = frame_from_atoms(atoms)
        assert same_bits(ref.positions, frame.positions)
        assert same_bits(ref.forces, frame.forces)
        assert same_bits(ref.cell, frame.cell)
        assert ref.energy == frame.energy
        assert ref.velocities is not None and frame.velocities is not None
        np.testing.assert_allclose(ref.velocities, frame.velocities, rtol=2.3e-16, atol=0)
        assert atoms.info["step"] == frame.step and atoms.info["time"] == frame.time
    assert_matches_ase(list(iread(path)), path)  # and our reader agrees with ASE on it


@pytest.mark.parametrize("suffix", [".extxyz.gz", ".extxyz.bz2", ".extxyz.xz"])
def test_writer_compresses_by_suffix(
    tmp_path: Path, md_frames: dict[int, list[Frame]], suffix: str
) -> None:
    path = tmp_path / f"dump{suffix}"
    write_extxyz(path, md_frames[32][:3])
    assert path.read_bytes()[:2] != b"3\n"
    assert [f.step for f in iread(path)] == [f.step for f in md_frames[32][:3]]


def test_writer_append_and_file_object(tmp_path: Path) -> None:
    frame = Frame(np.zeros((1, 3)), [1], step=1)
    path = tmp_path / "a.extxyz"
    write_extxyz(path, frame)
    write_extxyz(path, [frame, frame], append=True)
    assert len(list(iread(path))) == 3
    out = io.StringIO()
    with XYZWriter(out) as writer:
        writer.write(frame)
        writer.write(frame)
    assert writer.frames == 2 and out.getvalue().count("\n") == 6


def test_writer_skips_reserved_and_unserialisable_info(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    frame = Frame(np.zeros((1, 3)), [1], energy=1.0)
    frame.info = {"energy": 5.0, "bad key": 1, "obj": object(), "ok": 1}
    path = tmp_path / "r.extxyz"
    with caplog.at_level(logging.WARNING, logger="trajwatch.replay"):
        write_extxyz(path, frame)
    back = next(iread(path))
    assert back.energy == 1.0 and back.info == {"ok": 1}
    assert len(caplog.records) == 3


finite = st.floats(allow_nan=False, allow_infinity=False)
anything = st.floats(allow_nan=True, allow_infinity=True)
info_keys = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True).filter(
    lambda k: k not in xyz._RESERVED_KEYS and k != "free_energy"
)
info_values = st.one_of(
    st.integers(),
    finite,
    st.booleans(),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12).map(
        lambda s: "s" + s
    ),
    st.lists(st.integers(-(2**62), 2**62), min_size=2, max_size=5).map(np.array),
    st.lists(finite, min_size=2, max_size=5).map(lambda v: np.array(v, dtype=np.float64)),
    st.lists(st.booleans(), min_size=2, max_size=5),
)


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    n = draw(st.integers(0, 12))
    vectors = st.lists(st.tuples(anything, anything, anything), min_size=n, max_size=n)
    positions = np.array(draw(vectors), dtype=np.float64).reshape(n, 3)
    numbers = draw(st.lists(st.integers(0, 118), min_size=n, max_size=n))
    forces = draw(st.none() | vectors)
    velocities = draw(st.none() | vectors)
    cell = draw(st.none() | st.lists(finite, min_size=9, max_size=9))
    frame = Frame(
        positions,
        numbers,
        forces=None if forces is None else np.array(forces, dtype=np.float64).reshape(n, 3),
        velocities=None if velocities is None else np.array(velocities).reshape(n, 3),
        energy=draw(st.none() | anything),
        cell=None if cell is None else np.array(cell).reshape(3, 3),
        pbc=draw(st.lists(st.booleans(), min_size=3, max_size=3)),
        step=draw(st.integers(-(2**62), 2**62)),
        time=draw(st.none() | anything),
        info=draw(st.dictionaries(info_keys, info_values, max_size=4)),
    )
    return frame


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.lists(frames(), min_size=1, max_size=3))
def test_round_trip_property(tmp_path: Path, batch: list[Frame]) -> None:
    path = tmp_path / "rt.extxyz"
    write_extxyz(path, batch, velocities="vel")
    back = list(iread(path))
    assert len(back) == len(batch)
    for index, (a, b) in enumerate(zip(batch, back, strict=True)):
        assert same_bits(a.positions, b.positions)
        np.testing.assert_array_equal(a.numbers, b.numbers)
        for name in ("forces", "velocities", "cell"):
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None) == (y is None) and (x is None or same_bits(x, y)), name
        np.testing.assert_array_equal(a.pbc, b.pbc)
        assert same_bits(
            np.nan if a.energy is None else a.energy, np.nan if b.energy is None else b.energy
        )
        assert (a.energy is None) == (b.energy is None)
        assert a.step == b.step and b.seq == index
        assert (a.time is None) == (b.time is None)
        assert a.time is None or same_bits(a.time, b.time)
        assert_same_info(a.info, b.info)


# --------------------------------------------------------------------------------------
# the parsing kernels
# --------------------------------------------------------------------------------------


_ONE_REAL = (np.array([_parse.REAL]), np.array([_parse.SCALAR]), np.array([0]))


def parse_tokens(tokens: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each token as the reader parses it, the one column of a row that ``parse_rows``
    reads: the values and a status per token (0 ok, 1 not a number, 2 slow: NaN, left
    to ``float()``)."""
    values = np.full(len(tokens), np.nan)
    status = np.empty(len(tokens), dtype=np.int64)
    unused = np.empty((1, 3))
    for k, token in enumerate(tokens):
        buf = np.frombuffer(f"{token}\n".encode(), dtype=np.uint8)
        code, _offset, _row, _column, n_slow = _parse.parse_rows(
            buf, 0, len(buf), True, 1, *_ONE_REAL, True, _parse.SYMBOL_TABLE,
            _parse.POW5_TABLE, unused, unused, unused, values[k : k + 1],
            np.empty(1, dtype=np.int32), np.empty((1, 5), dtype=np.int64),
        )  # fmt: skip
        assert code in (_parse.OK, _parse.BAD_NUMBER), (token, code)
        status[k] = 1 if code == _parse.BAD_NUMBER else 2 if n_slow else 0
    return values, status


def check_tokens(tokens: list[str]) -> None:
    """Every accepted token is bit-identical to float(); slow ones are valid floats."""
    values, status = parse_tokens(tokens)
    for token, value, state in zip(tokens, values, status, strict=True):
        if state == 1:
            with pytest.raises(ValueError):
                float(token)
            continue
        reference = float(token)
        if state == 0:
            assert same_bits(value, reference), (token, value, reference)


EDGE_TOKENS = [
    "0", "-0", "+0.0", "-0.0e5", "1.", ".5", "-.5e-3", "5e-324", "4.9e-324", "2e-324",
    "2.2250738585072011e-308", "2.2250738585072014e-308", "1.7976931348623157e308",
    "1.7976931348623158e308", "1.7976931348623159e308", "1e309", "1e-400", "9007199254740993",
    "9007199254740993.0", "0.1", "0.30000000000000004", "123456789012345678",
    "1234567890123456789", "00000000000000000000001.5", "0.000000000000000000000000001",
    "1e22", "1e23", "8.98846567431158e307", "nan", "-NaN", "inf", "+inf", "-Infinity",
    "INFINITY", "7.2057594037927933e16", "9.2233720368547758e18",
    "1.00000000000000011102230246251565404236316680908203125",
]  # fmt: skip
INVALID_TOKENS = [
    "1e", "e5", ".", "-", "+", "1.2.3", "infinit", "nana", "0x10", "1.0D+00", "12abc", "1e+",
    "--1", "1e5.5", "١",
]  # fmt: skip


def test_parse_real_edge_cases() -> None:
    check_tokens(EDGE_TOKENS)
    _values, status = parse_tokens(INVALID_TOKENS)
    assert status.tolist() == [1] * len(INVALID_TOKENS)


def test_parse_real_matches_float_on_many_random_numbers() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=4000) * 10.0 ** rng.integers(-30, 30, size=4000)
    bits = rng.integers(0, 2**63, size=4000, dtype=np.int64).view(np.float64)
    tokens = [repr(float(v)) for v in x]
    tokens += [f"{v:.8f}" for v in x[:1000]] + [f"{v:.17g}" for v in x[:1000]]
    tokens += [f"{v:.12e}" for v in x[:1000]] + [repr(float(v)) for v in bits]
    check_tokens(tokens)
    _values, status = parse_tokens(tokens[:4000])  # repr: at most 17 digits
    assert not (status == 2).any()  # so no float() fallback


@settings(max_examples=300, deadline=None)
@given(
    st.floats(allow_nan=False), st.sampled_from(["{!r}", "{:.8f}", "{:.17g}", "{:.3e}", "{:.20e}"])
)
def test_parse_real_property(value: float, fmt: str) -> None:
    check_tokens([fmt.format(value)])


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 10**25), st.integers(-350, 330))
def test_parse_real_decimal_property(mantissa: int, exponent: int) -> None:
    check_tokens([f"{mantissa}e{exponent}", f"{mantissa}.{mantissa % 997}e{exponent}"])


def test_eisel_lemire_table_matches_exact_powers_of_five() -> None:
    table = _parse.POW5_TABLE
    for q in (0, 1, 27, 28, 55, 308):
        value = (int(table[q + 342, 0]) << 64) | int(table[q + 342, 1])
        exact = 5**q
        shift = exact.bit_length() - 128
        assert value == (exact >> shift if shift > 0 else exact << -shift)


FRAME_BYTES = (
    b"2\nProperties=species:S:1:pos:R:3:momenta:R:3\n"
    b"Cu 1.5 -2 3e-3 1 2 3\nH 0 0 .25 0 0 1.0000000000000002\n"
)


def token_summary(values: np.ndarray, status: np.ndarray) -> str:
    return " ".join(f"{int(s)}:{float(v).hex()}" for v, s in zip(values, status, strict=True))


def frame_summary(frame: Frame) -> str:
    assert frame.velocities is not None
    arrays = [frame.numbers.tolist(), frame.positions.tolist(), frame.velocities.tolist()]
    return json.dumps(arrays)


def test_kernels_without_jit() -> None:
    """The kernels give the same answers as plain Python (NUMBA_DISABLE_JIT=1)."""
    script = (
        "import sys, io, json; sys.path[:0] = sys.argv[1:3]\n"
        "import numpy as np, warnings; warnings.simplefilter('error')\n"
        "from trajwatch.replay import _parse, xyz\n"
        "from test_xyz import FRAME_BYTES, frame_summary, parse_tokens, token_summary\n"
        "print(token_summary(*parse_tokens(sys.argv[3:])))\n"
        "print(frame_summary(next(xyz.XYZReader(io.BytesIO(FRAME_BYTES)))))\n"
    )
    tokens = [*EDGE_TOKENS, *INVALID_TOKENS, "12.345678901234567", "-0.08184715"]
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script, str(SRC), str(Path(__file__).parent), *tokens],
        env=env, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    interpreted_tokens, interpreted_frame = result.stdout.strip().split("\n")
    assert interpreted_tokens == token_summary(*parse_tokens(tokens))
    assert interpreted_frame == frame_summary(next(XYZReader(io.BytesIO(FRAME_BYTES))))


def test_doctests() -> None:
    logging.getLogger("trajwatch.replay").addHandler(logging.NullHandler())
    result = doctest.testmod(xyz, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 10 and result.failed == 0


def test_warmup_runs() -> None:
    warmup()


def test_float_bits_helper_is_strict() -> None:
    assert not same_bits(0.0, -0.0)
    assert same_bits(float("nan"), -float("nan"))
    assert struct.pack("<d", 1.0) != struct.pack("<d", math.nextafter(1.0, 2.0))


FUZZ_BASE = (
    GOOD
    + '3\nLattice="3 0 0 0 3 0 0 0 3" Properties=species:S:1:pos:R:3:momenta:R:3:forces:R:3'
    + ' energy=-1.5 step=7 time=14.0 pbc="T T T" tag="a b"\n'
    + "Cu 0.1 0.2 0.3 1.5 -2.5e-3 3 0.01 0.02 0.03\n" * 3
    + "2\nplain comment\nH 0 0 0 extra\n1 0 0 0.74\n"
).encode()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, len(FUZZ_BASE)), st.binary(max_size=4), st.integers(0, 3)),
        min_size=1,
        max_size=4,
    )
)
def test_corrupted_files_never_crash(edits: list[tuple[int, bytes, int]]) -> None:
    data = bytearray(FUZZ_BASE)
    for position, insert, delete in edits:
        data[position : position + delete] = insert
    reader = XYZReader(io.BytesIO(bytes(data)), skip_bad=True)
    frames = list(reader)  # never raises with skip_bad
    assert reader.frames == len(frames) and len(reader.errors) == reader.bad_frames
    for frame in frames:
        assert frame.positions.shape == (frame.n_atoms, 3)
        assert ((frame.numbers >= 0) & (frame.numbers <= 118)).all()
    try:
        strict = list(XYZReader(io.BytesIO(bytes(data))))
    except XYZFormatError:
        assert reader.bad_frames > 0
    else:
        assert reader.bad_frames == 0 and len(strict) == len(frames)
