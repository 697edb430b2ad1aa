"""Fuzzing the xyz/extxyz reader: every malformed file is an XYZFormatError with a line.

Inputs are files put together from xyz-like lines (count lines, extxyz comment lines
with ``Lattice``/``Properties``/``pbc`` and friends, atom rows, all with plausible and
hostile values), valid files with bytes flipped, cut, repeated or inserted, compressed
files cut short, and random bytes. Reading one to the end yields well-formed frames
and then either stops or raises :class:`XYZFormatError` naming a line of the file; with
``skip_bad=True`` it never raises and counts what it skipped. Nothing else may escape,
nothing may hang (a per-example deadline, and a watchdog that ends the run), and a count
line claiming a billion atoms must not make the reader allocate for them (read in a child
process with a capped address space).
"""

from __future__ import annotations

import bz2
import faulthandler
import gzip
import io
import json
import lzma
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trajwatch.frame import Frame

xyz = pytest.importorskip("trajwatch.replay.xyz", reason="the xyz reader is not merged yet")
XYZFormatError = xyz.XYZFormatError
XYZReader = xyz.XYZReader

EXAMPLE_SECONDS = 5.0
FUZZ = settings(
    max_examples=300,
    deadline=EXAMPLE_SECONDS * 1000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module", autouse=True)
def compiled() -> None:
    """Compile the parsing kernels once, so the first example is not timed with them."""
    xyz.warmup()


@pytest.fixture(autouse=True)
def watchdog() -> Iterator[None]:
    """A hang (even inside a Numba kernel) dumps every thread's stack and ends the run."""
    faulthandler.dump_traceback_later(300, exit=True, file=sys.stderr)
    yield
    faulthandler.cancel_dump_traceback_later()


# -- strategies: files made of xyz-like lines ------------------------------------------

INTEGER = st.one_of(
    st.integers(-3, 12).map(str),
    st.integers(13, 2_000_000).map(str),  # more atoms than rows: the buffer grows
    # 1073741824 (2**30, the reader's limit) is left to test_inputs_the_fuzzers_found
    st.sampled_from(["0", "1000000", "1000001", "1073741825", "4294967296", "9" * 30]),
    st.sampled_from(["", " ", "3.0", "+3", "-0", "0x3", "3 3", "three", "1_0", "\t2"]),
)
NUMBER = st.one_of(
    st.floats(-1e4, 1e4).map(repr),
    st.sampled_from(["0", "-0.0", "1e999", "-1e999", "nan", "NaN", "inf", "-Infinity", "1d0"]),
    st.sampled_from(["1e", "--1", "1.2.3", ".", "", "0x1p3", "١", "1e-400", "2.5E+03"]),
    st.text(alphabet="0123456789.eE+-", max_size=8),
)
SYMBOL = st.one_of(
    st.sampled_from(["H", "C", "O", "Cu", "Og", "X", "Xx", "h", "CU", "1", "29", "0", "119"]),
    st.sampled_from(["-1", "Uuo", "D", "", "é", "H2"]),
)
BOOL = st.sampled_from(["T", "F", "True", "false", "1", "0", "x", ""])
PROPERTY_COLUMN = st.one_of(
    st.sampled_from(["species:S:1", "pos:R:3", "forces:R:3", "velocities:R:3"]),
    st.sampled_from(["momenta:R:3", "masses:R:1", "Z:I:1", "numbers:I:1", "tags:I:1"]),
    st.tuples(
        st.sampled_from(["pos", "species", "x", "forces", ""]),
        st.sampled_from(["R", "S", "I", "L", "Q", ""]),
        INTEGER,
    ).map(":".join),
)


def quoted(values: st.SearchStrategy[str], size: tuple[int, int]) -> st.SearchStrategy[str]:
    return st.lists(values, min_size=size[0], max_size=size[1]).map(
        lambda v: '"' + " ".join(v) + '"'
    )


PAIR = st.one_of(
    quoted(NUMBER, (0, 11)).map(lambda v: f"Lattice={v}"),
    st.lists(PROPERTY_COLUMN, min_size=0, max_size=5).map(lambda c: "Properties=" + ":".join(c)),
    quoted(BOOL, (0, 4)).map(lambda v: f"pbc={v}"),
    NUMBER.map(lambda v: f"energy={v}"),
    INTEGER.map(lambda v: f"step={v}"),
    NUMBER.map(lambda v: f"time={v}"),
    st.sampled_from(['a="unclosed', "b={1 2", "c=[1, [2]", 'd="x\\"y"', "e='q'", "=", "==", "f="]),
    st.sampled_from(["g=\\", 'h="\\', "stress={1 2 3 4 5 6 7 8 9}", 'virial="1 2 3"', "k"]),
    st.text(max_size=12),
)
COMMENT = st.lists(PAIR, max_size=6).map(" ".join)
ATOM_ROW = st.tuples(SYMBOL, st.lists(NUMBER, min_size=0, max_size=10)).map(
    lambda r: " ".join([r[0], *r[1]])
)


@st.composite
def xyz_frames(draw: st.DrawFn) -> str:
    """One frame: a count line, a comment line, rows (their number may disagree)."""
    n = draw(st.integers(0, 6))
    count = str(n) if draw(st.booleans()) else draw(INTEGER)
    rows = draw(st.lists(ATOM_ROW, min_size=max(0, n - 1), max_size=n + 1))
    if draw(st.booleans()):  # mostly plausible rows: a species and three coordinates
        rows = [f"{draw(SYMBOL)} {draw(NUMBER)} {draw(NUMBER)} {draw(NUMBER)}" for _ in range(n)]
    return "\n".join([count, draw(COMMENT), *rows])


@st.composite
def xyz_files(draw: st.DrawFn) -> bytes:
    frames = draw(st.lists(xyz_frames(), max_size=4))
    newline = draw(st.sampled_from(["\n", "\r\n", "\n\n"]))
    text = newline.join(frames) + draw(st.sampled_from(["\n", "", "\n\n", " "]))
    return text.encode("utf-8", "surrogatepass")


VALID = (
    b'2\nLattice="3.6 0 0 0 3.6 0 0 0 3.6" Properties=species:S:1:pos:R:3:forces:R:3 '
    b'energy=-7.1 time=2.0 pbc="T T T"\nCu 0 0 0 0.1 0 0\nCu 1.8 1.8 0 -0.1 0 0\n'
    b"3\nstep=5 energy=-14.2\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n"
    b"1\nProperties=species:S:1:pos:R:3:momenta:R:3:masses:R:1\nAr 1 2 3 0.1 0.2 0.3 39.9\n"
)


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    data = bytearray(VALID * draw(st.integers(1, 3)))
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, max(0, len(data) - 1)))
        action = draw(st.sampled_from(["flip", "set", "cut", "repeat", "insert", "truncate"]))
        if not data:
            break
        if action == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "set":
            data[at] = draw(st.sampled_from(b"\n\r\t \"'{}[]=:.-+0123456789eETFx\x00\xff"))
        elif action == "cut":
            del data[at : at + draw(st.integers(1, 40))]
        elif action == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 80))]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at:]
    return bytes(data)


ANY_FILE = st.one_of(xyz_files(), mutated_files(), st.binary(max_size=400))


# -- properties ----------------------------------------------------------------------


def check_frame(frame: Frame) -> None:
    n = frame.n_atoms
    assert frame.positions.shape == (n, 3) and frame.positions.dtype == np.float64
    assert frame.numbers.shape == (n,) and frame.numbers.dtype == np.int32
    assert ((frame.numbers >= 0) & (frame.numbers <= 118)).all()
    for array in (frame.velocities, frame.forces):
        assert array is None or (array.shape == (n, 3) and array.dtype == np.float64)
    assert frame.cell is None or (frame.cell.shape == (3, 3) and np.isfinite(frame.cell).all())
    assert frame.pbc.shape == (3,) and frame.pbc.dtype == np.bool_


def check_error(error: BaseException, data: bytes) -> None:
    assert isinstance(error, XYZFormatError), repr(error)
    lines = data.count(b"\n") + 1
    assert 1 <= error.line <= lines, (error.line, lines, str(error))
    assert error.reason and str(error).startswith(f"{error.path}, line {error.line}: ")


def read_all(data: bytes) -> list[Frame]:
    """Strict reading: frames, then the end or one XYZFormatError (re-raised)."""
    frames = []
    with XYZReader(io.BytesIO(data)) as reader:
        for frame in reader:
            check_frame(frame)
            frames.append(frame)
    return frames


def read_forgiving(data: bytes) -> XYZReader:
    with XYZReader(io.BytesIO(data), skip_bad=True) as reader:
        frames = [frame for frame in reader]
    for frame in frames:
        check_frame(frame)
    assert reader.frames == len(frames)
    assert reader.bad_frames == len(reader.errors)
    for error in reader.errors:
        check_error(error, data)
    # each frame, good or bad, takes at least one line: no endless stream of errors
    assert reader.frames + reader.bad_frames <= data.count(b"\n") + 1
    return reader


@FUZZ
@given(ANY_FILE)
def test_strict_reading_ends_or_raises_a_located_error(data: bytes) -> None:
    try:
        read_all(data)
    except XYZFormatError as error:
        check_error(error, data)


@FUZZ
@given(ANY_FILE)
def test_skip_bad_never_raises_and_counts_what_it_skips(data: bytes) -> None:
    forgiving = read_forgiving(data)
    try:
        strict = len(read_all(data))
    except XYZFormatError:
        assert forgiving.bad_frames >= 1
    else:
        assert (forgiving.frames, forgiving.bad_frames) == (strict, 0)


@settings(FUZZ, max_examples=60)
@given(mutated_files() | xyz_files(), st.sampled_from(["gz", "bz2", "xz"]), st.data())
def test_damaged_compressed_files_are_format_errors(
    data: bytes, kind: str, draw: st.DataObject
) -> None:
    packed = bytearray({"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[kind](data))
    if draw.draw(st.booleans()):
        del packed[draw.draw(st.integers(0, len(packed))) :]
    else:
        at = draw.draw(st.integers(0, len(packed) - 1))
        packed[at] ^= 1 << draw.draw(st.integers(0, 7))
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, f"run.xyz.{kind}")
        with open(path, "wb") as f:
            f.write(packed)
        try:
            with XYZReader(path) as reader:
                for frame in reader:
                    check_frame(frame)
        except XYZFormatError as error:
            assert error.line >= 1 and error.reason
        with XYZReader(path, skip_bad=True) as reader:
            for frame in reader:
                check_frame(frame)


# -- hostile atom counts: read in a child process whose address space is capped ---------

CAP_MB = 256
"""Memory the reader may take on top of what the child holds after its imports: a frame
of a million atoms (about 60 MB with every column) fits, a claim of a billion does not."""

HOSTILE = {
    "1e6 atoms": b"1000000\nenergy=1\nH 0 0 0\nH 1 0 0\n",
    "1e6+1 atoms": b"1000001\nenergy=1\nH 0 0 0\nH 1 0 0\n",
    "1e9 atoms": b"1000000000\nenergy=1\nH 0 0 0\nH 1 0 0\n",
    "2**30 atoms": b"1073741824\nenergy=1\nH 0 0 0\nH 1 0 0\n",
    "2**30 atoms, nothing else": b"1073741824\n\n",
    "2**30+1 atoms": b"1073741825\nenergy=1\nH 0 0 0\nH 1 0 0\n",
    "1e30 atoms": b"1" + b"0" * 30 + b"\nenergy=1\nH 0 0 0\n",
    # a long first row made the reader ask for count x row length bytes at once
    "1e6 atoms, one long row": b"1000000\n\nH 0 0 0" + b" " * 30000 + b"\nH 0 0 0\n",
    # a skipped column claiming 1e30 columns made the layout a list of 1e30 entries
    "Properties, 1e30 columns": b"1\nProperties=species:S:1:pos:R:3:x:S:"
    + b"9" * 30
    + b"\nH 0 0 0\n",
    "skip_bad resync": b"1\n1\nX",  # found by fuzz/fuzz_xyz.py (also 266661\nC 0 0\n\x86)
}

_CHILD = r"""
import io, json, resource, sys
from trajwatch.replay.xyz import XYZFormatError, XYZReader, warmup
warmup()
size = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize"))
cap = size * 1024 + int(sys.argv[1]) * 2**20
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
out = {}
for name, text in json.loads(sys.stdin.read()).items():
    data = text.encode("latin-1")
    for skip in (False, True):
        try:
            with XYZReader(io.BytesIO(data), skip_bad=skip) as reader:
                frames = sum(1 for _ in reader)
            result = f"{frames} frames, {reader.bad_frames} bad"
        except XYZFormatError as error:
            result = f"XYZFormatError at line {error.line}"
        except BaseException as error:
            result = type(error).__name__
        out[f"{name}, skip_bad={skip}"] = result
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def capped_outcomes() -> dict[str, str]:
    """How the reader fared on each HOSTILE input, strictly and with skip_bad."""
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(CAP_MB)],
        input=json.dumps({k: v.decode("latin-1") for k, v in HOSTILE.items()}),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    outcomes: dict[str, str] = json.loads(result.stdout)
    return outcomes


@pytest.mark.parametrize(
    "case",
    list(HOSTILE),
)
def test_hostile_counts_and_found_inputs_within_bounded_memory(
    capped_outcomes: dict[str, str], case: str
) -> None:
    strict = capped_outcomes[f"{case}, skip_bad=False"]
    forgiving = capped_outcomes[f"{case}, skip_bad=True"]
    assert strict.startswith("XYZFormatError at line "), strict
    assert forgiving.endswith(" bad") and not forgiving.endswith(" 0 bad"), forgiving
