"""Streaming reader and writer for xyz and ASE-style extended xyz (extxyz) trajectories.

The reader is forward-only: it reads the file in growing byte chunks and yields one
:class:`~trajwatch.frame.Frame` per frame as soon as that frame's lines are in memory, so
the first frame of a huge (or still growing) file arrives after reading only the first
chunk. ``.gz``, ``.bz2`` and ``.xz`` files are decompressed on the fly (recognised by
their magic bytes, whatever their name). The atom rows are parsed by a private Numba
kernel (:mod:`trajwatch.replay._parse`) whose numbers are bit-identical to ``float()``.

Units follow trajwatch (Å, fs, eV, amu): an ASE ``momenta`` column (amu·Å per ASE time
unit) becomes velocities ``p / m / ASE_TIME_IN_FS`` in Å/fs; see ``docs/formats.md`` for
every column and key.

>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "water.xyz")
>>> with open(path, "w") as f:
...     _ = f.write("3\\nenergy=-14.2 step=7\\nO 0 0 0\\nH 0.96 0 0\\nH -0.24 0.93 0\\n")
>>> frame = next(iread(path))
>>> frame.numbers.tolist(), frame.energy, frame.step, frame.source
([8, 1, 1], -14.2, 7, 'water')
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import logging
import lzma
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, BinaryIO, Literal, cast

import numpy as np
from numpy.typing import NDArray

from trajwatch._direct_call import DirectCall, fingerprint
from trajwatch.elements import MASSES, SYMBOLS
from trajwatch.frame import Frame
from trajwatch.replay import _parse
from trajwatch.units import ASE_TIME_IN_FS

__all__ = ["XYZFormatError", "XYZReader", "XYZWriter", "iread", "warmup", "write_extxyz"]

logger = logging.getLogger("trajwatch.replay")

PathLike = str | os.PathLike[str]

_MAX_ATOMS = 1 << 30  # a larger count line is taken for garbage, not allocated
_PREFETCH_ATOMS = 1 << 20  # above this many atoms, check the data is there first
_MAX_LINE = 1 << 24  # 16 MiB without a line break: give up
_FIRST_CHUNK = 1 << 16  # 64 KiB: enough for the first frame of most files, and fast
_MAX_CHUNK = 1 << 20  # 1 MiB
_MAX_COLUMNS = 1 << 12  # atom columns Properties may declare (a claim of 1e30 is garbage)
_COMPRESSION_SUFFIXES = (".gz", ".gzip", ".bz2", ".xz", ".lzma")
_XYZ_SUFFIXES = (".xyz", ".extxyz")

#: comment-line keys that become Frame fields instead of ``Frame.info`` entries
_RESERVED_KEYS = frozenset({"Lattice", "Properties", "pbc", "energy", "step", "time"})
#: info keys that ASE stores as 3x3 matrices written in Fortran (column-major) order
_MATRIX_KEYS = frozenset({"stress", "virial"})
_BOOLS = {
    "T": True, "F": False, "True": True, "False": False,
    "true": True, "false": False, "TRUE": True, "FALSE": False,
}  # fmt: skip


class XYZFormatError(ValueError):
    """A malformed frame; ``path`` and ``line`` (1-based) say where it is.

    >>> err = XYZFormatError("run.xyz", 12, "expected 4 columns, found 3")
    >>> str(err), err.line
    ('run.xyz, line 12: expected 4 columns, found 3', 12)
    """

    def __init__(self, path: str, line: int, reason: str, *, frame: int | None = None):
        self.path = path
        self.line = line
        self.reason = reason
        self.frame = frame
        super().__init__(f"{path}, line {line}: {reason}")


# --------------------------------------------------------------------------------------
# comment line
# --------------------------------------------------------------------------------------

# One ``key[=value]`` pair. The value is double- or single-quoted, in braces, in brackets
# (one level of nesting), or bare; a pair must be followed by whitespace or the end, which
# keeps backtracking linear on malformed lines.
_PAIR = re.compile(
    r"""([^\s="'{}\[\]]+)"""
    r"""(?:\s*(=)\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|\{([^{}]*)\}"""
    r"""|\[((?:[^\[\]]|\[[^\[\]]*\])*)\]|((?:[^\s"'\\]|\\.)*)))?(?=\s|$)""",
    re.DOTALL,
)
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_SPLIT = re.compile(r"[^\s,]+")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")


def _split_pairs(text: str) -> list[tuple[str, str | None]] | None:
    """``key=value`` pairs of a comment line (value None for a bare key), or None when
    the line is not a sequence of such pairs."""
    pairs = _split_pairs_simple(text)
    if pairs is not None:
        return pairs
    if _PAIR.sub("", text).strip():
        return None
    pairs = []
    for key, equals, dq, sq, br, sb, bare in _PAIR.findall(text):
        value: str | None
        if not equals:
            value = None
        else:
            value = bare or dq or sq or br
            if not value and sb:
                value = "[" + sb + "]" if "[" in sb else sb  # nested: for the caller to judge
            if "\\" in value:
                value = _ESCAPE.sub(r"\1", value)
        pairs.append((key, value))
    return pairs


def _split_pairs_simple(text: str) -> list[tuple[str, str | None]] | None:
    """Fast path for the usual line: bare values and double quotes without escapes.

    Returns None whenever the line needs the general parser (which then decides).
    """
    if "\\" in text or "'" in text or "{" in text or "[" in text or "}" in text:
        return None
    segments = text.split('"')
    if len(segments) % 2 == 0:
        return None
    pairs: list[tuple[str, str | None]] = []
    last = len(segments) - 1
    for k in range(0, len(segments), 2):
        outside = segments[k]
        if k and outside and not outside[0].isspace():
            return None  # a closing quote must be followed by whitespace
        tokens = outside.split()
        quoted = segments[k + 1] if k < last else None
        if quoted is not None and not outside.endswith("="):
            return None
        for index, token in enumerate(tokens, 1):
            key, equals, value = token.partition("=")
            if not key or key[-1] in "\"'":
                return None
            if not equals:
                pairs.append((key, None))
            elif value:
                pairs.append((key, value))
            elif quoted is not None and index == len(tokens):
                pairs.append((key, quoted))
            else:
                return None  # "key= value" or "key =": leave to the general parser
    return pairs


def _convert_value(key: str, raw: str | None) -> Any:
    """ASE's conversion of an info value: int, float, bool, their arrays, JSON or str."""
    if raw is None:
        return True
    parts = _SPLIT.findall(raw)
    if key in _MATRIX_KEYS and len(parts) == 9:
        try:
            return np.array([float(p) for p in parts]).reshape(3, 3, order="F")
        except ValueError:
            pass
    if len(parts) == 1:
        token = parts[0]
        try:
            return int(token)
        except ValueError:
            pass
        try:
            return float(token)
        except ValueError:
            pass
        flag = _BOOLS.get(token)
        if flag is not None:
            return flag
    elif parts:
        try:
            return np.array([int(p) for p in parts], dtype=np.int64)
        except (ValueError, OverflowError):
            pass
        try:
            return np.array([float(p) for p in parts], dtype=np.float64)
        except ValueError:
            pass
        flags = [_BOOLS.get(p) for p in parts]
        if None not in flags:
            return flags
    if raw.startswith("_JSON "):
        try:
            decoded = json.loads(raw[6:])
        except ValueError:
            return raw
        if isinstance(decoded, list):
            array = np.array(decoded)
            if array.dtype.kind in "ifb":
                return array
        return decoded
    return raw


def _number(raw: str | None) -> float:
    if raw is None:
        raise ValueError
    try:
        return float(raw)
    except ValueError:
        pass
    parts = _SPLIT.findall(raw)
    if len(parts) != 1:
        raise ValueError
    return float(parts[0])


def _integer(raw: str | None) -> int:
    if raw is None:
        raise ValueError
    try:
        return int(raw)
    except ValueError:
        pass
    parts = _SPLIT.findall(raw)
    if len(parts) != 1:
        raise ValueError
    try:
        return int(parts[0])
    except ValueError:
        value = float(parts[0])
        if not value.is_integer():
            raise
        return int(value)


_PBC_CACHE: dict[str | None, NDArray[np.bool_]] = {}


def _parse_pbc(raw: str | None) -> NDArray[np.bool_]:
    """Three flags (or one for all three); the array is shared, so callers must copy."""
    pbc = _PBC_CACHE.get(raw)
    if pbc is not None:
        return pbc
    if raw is None:
        flags: list[bool | None] = [True, True, True]
    else:
        flags = [_BOOLS.get(p) for p in _SPLIT.findall(raw)]
    if len(flags) == 1:
        flags = flags * 3
    if len(flags) != 3 or None in flags:
        raise ValueError
    pbc = np.array(flags, dtype=np.bool_)
    pbc.setflags(write=False)
    if len(_PBC_CACHE) < 64:
        _PBC_CACHE[raw] = pbc
    return pbc


_last_lattice: tuple[str, NDArray[np.float64]] = ("", np.zeros((3, 3)))


def _parse_lattice(raw: str | None) -> NDArray[np.float64]:
    """The cell (rows are the lattice vectors), read-only: the frames of a run whose
    Lattice text repeats share one array (as Frame allows for a producer's cell)."""
    global _last_lattice
    last_raw, cell = _last_lattice
    if raw is not None and raw == last_raw:
        return cell
    cell = _lattice_from_text(raw)
    cell.setflags(write=False)
    _last_lattice = (raw or "", cell)  # one assignment: a thread reads the old or the new
    return cell


def _lattice_from_text(raw: str | None) -> NDArray[np.float64]:
    if raw is None:
        raise ValueError("Lattice has no value")
    if raw.startswith("["):
        raise ValueError(
            "nested Lattice=[[...]] is not supported (tools disagree on its orientation); "
            'write the nine numbers a1x a1y a1z a2x ... as Lattice="..."'
        )
    parts = _SPLIT.findall(raw)
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"Lattice has a non-number in {raw!r}") from None
    cell: NDArray[np.float64]
    if len(values) == 9:
        cell = np.array(values, dtype=np.float64).reshape(3, 3).copy()  # owned, for Frame
    elif len(values) == 3:
        cell = np.diag(np.array(values, dtype=np.float64))
    else:
        raise ValueError(f"Lattice needs 9 numbers (or 3 for a diagonal), found {len(values)}")
    if not np.isfinite(cell).all():
        raise ValueError(f"Lattice has non-finite entries: {raw!r}")
    return cell


# --------------------------------------------------------------------------------------
# Properties= column layout
# --------------------------------------------------------------------------------------

VelocityUnit = Literal["momenta", "ase", "fs"]

_POSITION_NAMES = frozenset({"pos", "positions"})
_SPECIES_NAMES = frozenset({"species", "symbols"})
_NUMBER_NAMES = frozenset({"Z", "numbers"})
_FORCE_NAMES = frozenset({"forces", "force"})
_MASS_NAMES = frozenset({"masses", "mass"})
#: velocity-like columns, in order of preference, and the unit each is stored in
_VELOCITY_NAMES: dict[str, VelocityUnit] = {
    "momenta": "momenta",
    "velocities": "ase",
    "vel": "fs",
    "velo": "fs",
}


@dataclass(frozen=True)
class _Layout:
    """How the tokens of one atom row map to arrays (one per distinct Properties string)."""

    kinds: NDArray[np.int64]
    groups: NDArray[np.int64]
    components: NDArray[np.int64]
    exact: bool
    forces: bool
    velocities: VelocityUnit | None
    masses: bool


def _layout_from_properties(text: str) -> _Layout:
    fields = text.split(":")
    if len(fields) % 3 != 0 or not fields[0]:
        raise ValueError(f"Properties={text!r} is not a list of name:type:columns triples")
    columns: list[tuple[str, str, int]] = []
    total = 0
    for k in range(0, len(fields), 3):
        name, kind, count = fields[k], fields[k + 1], fields[k + 2]
        if kind not in ("S", "R", "I", "L"):
            raise ValueError(f"Properties: column {name!r} has unknown type {kind!r}")
        if not (count.isascii() and count.isdigit()):  # int() would take "1_0", " +3"
            raise ValueError(f"Properties: column {name!r} has count {count!r}")
        ncols = int(count)
        if ncols < 1:
            raise ValueError(f"Properties: column {name!r} has count {ncols}")
        total += ncols
        if total > _MAX_COLUMNS:
            raise ValueError(f"Properties declares more than {_MAX_COLUMNS} columns")
        columns.append((name, kind, ncols))
    names = [c[0] for c in columns]
    has_numbers = any(n in _NUMBER_NAMES for n in names)
    velocity_name = next((n for n in _VELOCITY_NAMES if n in names), None)
    kinds: list[int] = []
    groups: list[int] = []
    components: list[int] = []
    seen: set[str] = set()

    def add(kind: int, group: int, n: int) -> None:
        for c in range(n):
            kinds.append(kind)
            groups.append(group)
            components.append(c)

    for name, kind, ncols in columns:
        role = None
        if name in _POSITION_NAMES:
            role, want = "positions", ("R", 3)
        elif name in _SPECIES_NAMES and "species" not in seen:
            role, want = "species", ("S", 1)
        elif name in _NUMBER_NAMES:
            role, want = "numbers", ("I", 1)
        elif name in _FORCE_NAMES and "forces" not in seen:
            role, want = "forces", ("R", 3)
        elif name == velocity_name:
            role, want = "velocities", ("R", 3)
        elif name in _MASS_NAMES and "masses" not in seen:
            role, want = "masses", ("R", 1)
        if role is None or (role == "species" and has_numbers):
            add(_parse.SKIP, 0, ncols)
            continue
        if (kind, ncols) != want:
            raise ValueError(
                f"Properties: column {name!r} is {kind}:{ncols}, expected {want[0]}:{want[1]}"
            )
        if role in seen:
            raise ValueError(f"Properties: more than one {role} column")
        seen.add(role)
        if role == "positions":
            add(_parse.REAL, _parse.POSITIONS, 3)
        elif role == "species":
            add(_parse.SPECIES, 0, 1)
        elif role == "numbers":
            add(_parse.ATOMIC_NUMBER, 0, 1)
        elif role == "forces":
            add(_parse.REAL, _parse.FORCES, 3)
        elif role == "velocities":
            add(_parse.REAL, _parse.VELOCITIES, 3)
        else:
            add(_parse.REAL, _parse.SCALAR, 1)
    if "positions" not in seen:
        raise ValueError(f"Properties={text!r} has no pos:R:3 column")
    if "species" not in seen and "numbers" not in seen:
        raise ValueError(f"Properties={text!r} has neither species:S:1 nor Z:I:1")
    return _Layout(
        kinds=np.array(kinds, dtype=np.int64),
        groups=np.array(groups, dtype=np.int64),
        components=np.array(components, dtype=np.int64),
        exact=True,
        forces="forces" in seen,
        velocities=_VELOCITY_NAMES[velocity_name] if velocity_name else None,
        masses="masses" in seen,
    )


_PLAIN_LAYOUT = _Layout(
    kinds=np.array([_parse.SPECIES, _parse.REAL, _parse.REAL, _parse.REAL], dtype=np.int64),
    groups=np.array([0, _parse.POSITIONS, _parse.POSITIONS, _parse.POSITIONS], dtype=np.int64),
    components=np.array([0, 0, 1, 2], dtype=np.int64),
    exact=False,
    forces=False,
    velocities=None,
    masses=False,
)
_LAYOUTS: dict[str, _Layout] = {}


def _layout(text: str) -> _Layout:
    layout = _LAYOUTS.get(text)
    if layout is None:
        layout = _layout_from_properties(text)
        if len(_LAYOUTS) > 256:
            _LAYOUTS.clear()
        _LAYOUTS[text] = layout
    return layout


@dataclass(slots=True)
class _Header:
    """What the comment line says about a frame."""

    layout: _Layout
    cell: NDArray[np.float64] | None = None
    pbc: NDArray[np.bool_] | None = None
    energy: float | None = None
    step: int | None = None
    time: float | None = None
    info: dict[str, Any] | None = None


def _parse_header(text: str) -> _Header:
    """Interpret a comment line; raises ValueError with a readable reason."""
    stripped = text.strip()
    if "=" not in stripped:
        return _Header(_PLAIN_LAYOUT, info={"comment": stripped} if stripped else None)
    pairs = _split_pairs(stripped)
    if pairs is None:
        if "Properties=" in stripped or "Lattice=" in stripped:
            raise ValueError("cannot parse the extxyz comment line (unbalanced quotes?)")
        return _Header(_PLAIN_LAYOUT, info={"comment": stripped})
    header = _Header(_PLAIN_LAYOUT)
    info: dict[str, Any] = {}
    lattice: str | None = None
    pbc: str | None = None
    has_pbc = False
    for key, raw in pairs:
        if key not in _RESERVED_KEYS:
            info[key] = _convert_value(key, raw)
        elif key == "Properties":
            if raw is None:
                raise ValueError("Properties has no value")
            header.layout = _layout(raw)
        elif key == "Lattice":
            lattice = raw
        elif key == "pbc":
            pbc, has_pbc = raw, True
        elif key == "energy":
            try:
                header.energy = _number(raw)
            except ValueError:
                raise ValueError(f"energy={raw!r} is not a number") from None
        elif key == "step":
            try:
                header.step = _integer(raw)
            except ValueError:
                raise ValueError(f"step={raw!r} is not an integer") from None
        else:  # time
            try:
                header.time = _number(raw)
            except ValueError:
                raise ValueError(f"time={raw!r} is not a number") from None
    if lattice is not None:
        header.cell = _parse_lattice(lattice)
    if has_pbc:
        try:
            header.pbc = _parse_pbc(pbc)
        except ValueError:
            raise ValueError(f"pbc={pbc!r} is not three T/F flags") from None
    if header.energy is None and "free_energy" in info:
        free = info["free_energy"]
        if isinstance(free, (int, float)) and not isinstance(free, bool):
            header.energy = float(free)
    header.info = info or None
    return header


# --------------------------------------------------------------------------------------
# reader
# --------------------------------------------------------------------------------------


def _open_binary(path: PathLike) -> tuple[BinaryIO, BinaryIO]:
    """Open for reading, decompressing gzip, bzip2 or xz (recognised by magic bytes).

    Returns the stream to read and the raw file under it (the same object for an
    uncompressed file); both must be closed.
    """
    raw = open(path, "rb", buffering=0)  # noqa: SIM115 (owned by the reader)
    try:
        magic = raw.read(6)
        raw.seek(0)
        if magic[:2] == b"\x1f\x8b":
            return gzip.GzipFile(fileobj=raw, mode="rb"), raw  # type: ignore[return-value]
        if magic[:3] == b"BZh":
            return bz2.BZ2File(raw, mode="rb"), raw  # type: ignore[return-value]
        if magic[:6] == b"\xfd7zXZ\x00":
            return lzma.LZMAFile(raw, mode="rb"), raw  # type: ignore[return-value]
    except BaseException:
        raw.close()
        raise
    return raw, raw


def _stem(name: str) -> str:
    lower = name.lower()
    for suffix in _COMPRESSION_SUFFIXES:
        if lower.endswith(suffix):
            name, lower = name[: -len(suffix)], lower[: -len(suffix)]
            break
    for suffix in _XYZ_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem if "." in name.lstrip(".") else name


_EMPTY_VECTORS = np.empty((0, 3), dtype=np.float64)
# the per-frame kernels, called without Numba's dispatcher typing their arguments every
# frame (~1.2 us of parse_rows' ~2.3 us a call: a few percent of a 100-atom frame)
_PARSE_ROWS = DirectCall(_parse.parse_rows)
_TO_VELOCITIES = DirectCall(_parse.to_velocities)
_EMPTY_SCALARS = np.empty(0, dtype=np.float64)
_INTEGER_LINE = re.compile(rb"\s*\+?\d+\s*")


def _readinto(file: BinaryIO, view: memoryview) -> int:
    # readinto1 (one decompression step) so that data before a corrupt spot is kept
    readinto = getattr(file, "readinto1", None) or getattr(file, "readinto", None)
    if readinto is not None:
        got: int | None = readinto(view)
        return got or 0
    data = file.read(len(view))
    if not isinstance(data, bytes | bytearray):
        raise TypeError(f"expected a binary file, read returned {type(data).__name__}")
    view[: len(data)] = data
    return len(data)


class _FatalError(Exception):
    """Internal: the file cannot be read any further (corrupt compressed data, no lines)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _BadFrameError(Exception):
    """Internal: a malformed frame; ``resume`` is where to look for the next one."""

    def __init__(self, line: int, reason: str, resume: int, resume_line: int) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason
        self.resume = resume
        self.resume_line = resume_line


class XYZReader:
    """Iterate over the frames of an xyz/extxyz file (optionally compressed), streaming.

    Forward-only, with no length: a file may still be growing. A frame that is incomplete
    when the reader reaches the current end of the file is malformed (``XYZFormatError``),
    like any other bad frame. With ``skip_bad=True`` bad frames are instead counted in
    ``bad_frames``, kept in ``errors``, logged to the ``trajwatch.replay`` logger, and the
    reader carries on at the next line that looks like an atom-count line.

    ``Frame.seq`` is the frame's 0-based index in the file (bad frames count, so a gap
    marks a skipped frame), ``Frame.step`` the ``step`` key or else that index, and
    ``Frame.source`` the ``source`` argument or else the file name without its
    ``.xyz``/``.extxyz`` and compression suffixes.

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "two.xyz")
    >>> with open(path, "w") as f:
    ...     _ = f.write("1\\nstep=0\\nAr 0 0 0\\n1\\nstep=5\\nAr 0.1 0 0\\n2\\n\\nAr 0 0 0\\n")
    >>> with XYZReader(path, skip_bad=True) as reader:
    ...     steps = [frame.step for frame in reader]
    >>> steps, reader.frames, reader.bad_frames, reader.errors[0].line
    ([0, 5], 2, 1, 7)
    """

    def __init__(
        self,
        path: PathLike | BinaryIO,
        *,
        skip_bad: bool = False,
        source: str | None = None,
    ) -> None:
        if isinstance(path, (str, os.PathLike)):
            self.path = os.fspath(path)
            name = os.path.basename(self.path)
            self._file: BinaryIO | None
            self._file, self._raw = _open_binary(path)
            self._owns_file = True
        else:
            candidate: object = path
            if isinstance(candidate, io.TextIOBase):
                raise TypeError("XYZReader needs a binary file: open it with mode 'rb'")
            name = os.path.basename(str(getattr(path, "name", "") or ""))
            self.path = name or "<stream>"
            self._file = self._raw = path
            self._owns_file = False
        self.source = _stem(name) if source is None else source
        self.skip_bad = skip_bad
        self.frames = 0
        self.bad_frames = 0
        self.errors: list[XYZFormatError] = []
        self._buf = bytearray(_FIRST_CHUNK)
        self._view: NDArray[np.uint8] = np.frombuffer(self._buf, dtype=np.uint8)
        self._pos = 0  # start of the unconsumed data in the buffer
        self._end = 0  # end of the valid data in the buffer
        self._line = 1  # line number of the line that starts at self._pos
        self._index = 0  # frames seen so far, good or bad
        self._chunk = _FIRST_CHUNK
        self._resync = False
        self._broken = False
        self._pending: str | None = None  # a decompression error to report next
        self._slow = np.empty((64, 5), dtype=np.int64)

    # -- context manager / iterator protocol ------------------------------------------

    def __enter__(self) -> XYZReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __iter__(self) -> XYZReader:
        return self

    def __next__(self) -> Frame:
        if self._file is None:
            raise ValueError("I/O operation on a closed XYZReader")
        while True:
            if self._broken:
                raise StopIteration
            try:
                frame = self._read_frame()
            except _FatalError as exc:
                # corrupt compressed data, or no line breaks: nothing after it can be read
                self._broken = True
                error = XYZFormatError(self.path, self._line, exc.reason, frame=self._index)
                if not self.skip_bad:
                    raise error from exc.__cause__
                self.bad_frames += 1
                self.errors.append(error)
                logger.warning("stopped reading: %s", error)
                raise StopIteration from None
            except _BadFrameError as bad:
                error = XYZFormatError(self.path, bad.line, bad.reason, frame=self._index)
                self._index += 1
                self._pos = min(bad.resume, self._end)  # a last line may lack its newline
                self._line = bad.resume_line
                self._resync = True
                if not self.skip_bad:
                    raise error from None
                self.bad_frames += 1
                self.errors.append(error)
                logger.warning("skipped a bad frame: %s", error)
                continue
            if frame is None:
                raise StopIteration
            self.frames += 1
            return frame

    def close(self) -> None:
        """Close the file (if the reader opened it). Safe to call twice."""
        file, self._file = self._file, None
        if file is not None and self._owns_file:
            try:
                file.close()
            finally:
                self._raw.close()

    def __del__(self) -> None:
        if getattr(self, "_file", None) is not None:
            self.close()

    @property
    def closed(self) -> bool:
        return self._file is None

    def tell(self) -> int:
        """Bytes of the file on disk (compressed, if it is) read so far: for progress bars."""
        try:
            return int(self._raw.tell())
        except (OSError, ValueError, AttributeError):
            return 0

    # -- buffer ------------------------------------------------------------------------

    def _fill(self, need: int = 0) -> bool:
        """Read at least max(need, chunk) more bytes if the file has them; False at EOF.

        Moves the unconsumed data to the start of the buffer first, so offsets into the
        buffer change: callers keep offsets relative to ``self._pos``.
        """
        if self._file is None:
            raise ValueError("I/O operation on a closed XYZReader")
        want = max(need, self._chunk)
        self._chunk = min(self._chunk * 2, _MAX_CHUNK)
        tail = self._end - self._pos
        if tail + want > len(self._buf):
            # grow (rarely: the buffer settles at about twice the largest chunk or frame)
            grown = bytearray(max(2 * len(self._buf), tail + want))
            grown[:tail] = self._buf[self._pos : self._end]
            self._buf = grown
            self._view = np.frombuffer(grown, dtype=np.uint8)
        elif tail and self._pos:
            self._buf[:tail] = self._buf[self._pos : self._end]
        self._pos, self._end = 0, tail
        if self._pending is not None:
            raise _FatalError(self._pending)
        got = 0
        room = len(self._buf)  # read as much as fits, at least ``want``
        with memoryview(self._buf) as view:
            while got < want:
                try:
                    n = _readinto(self._file, view[tail + got : room])
                except (EOFError, OSError, lzma.LZMAError, zlib.error) as exc:
                    # a corrupt or truncated compressed stream: keep what came before it
                    self._pending = f"cannot decompress the file any further ({exc})"
                    if got:
                        break
                    raise _FatalError(self._pending) from exc
                if not n:
                    break
                got += n
        if not got:
            return False
        self._end = tail + got
        return True

    def _next_line(self, start: int) -> tuple[int, int] | None:
        """(start, end) of the line at byte offset ``start`` of the buffer (which may move:
        offsets are then relative to ``self._pos``); None if the data ends first."""
        offset = start - self._pos
        while True:
            begin = self._pos + offset
            end = self._buf.find(b"\n", begin, self._end)
            if end >= 0:
                return begin, end
            if self._end - self._pos - offset > _MAX_LINE:
                raise _FatalError(f"no line break in {_MAX_LINE >> 20} MiB: not an xyz file?")
            if not self._fill():
                begin = self._pos + offset
                if begin < self._end:
                    return begin, self._end  # last line without a newline
                return None

    # -- one frame ---------------------------------------------------------------------

    def _read_frame(self) -> Frame | None:
        # fast path: count and comment lines already in the buffer, count line valid
        buf, pos, end = self._buf, self._pos, self._end
        count_end = buf.find(b"\n", pos, end)
        if count_end >= 0 and not self._resync:
            comment_end = buf.find(b"\n", count_end + 1, end)
            if comment_end >= 0:
                try:
                    n_atoms = int(buf[pos:count_end])
                except ValueError:
                    n_atoms = -1
                if 0 <= n_atoms <= _MAX_ATOMS:
                    text = buf[count_end + 1 : comment_end].decode("utf-8", "replace")
                    try:
                        header = _parse_header(text)
                    except ValueError as exc:
                        raise _BadFrameError(
                            self._line + 1, str(exc), count_end + 1, self._line + 1
                        ) from None
                    return self._parse_atoms(
                        n_atoms, header, self._line, comment_end + 1 - pos, self._line + 1
                    )
        return self._read_frame_carefully()

    def _read_frame_carefully(self) -> Frame | None:
        # the count line, skipping blank lines (and, after an error, anything that is not
        # a lone integer)
        while True:
            span = self._next_line(self._pos)
            if span is None:
                self._pos = self._end
                return None
            begin, end = span
            text = self._buf[begin:end]
            if not text.strip() or (self._resync and _INTEGER_LINE.fullmatch(text) is None):
                # skip the line (the last one may lack its newline: stop at the end)
                self._pos, self._line = min(end + 1, self._end), self._line + 1
                continue
            break
        self._resync = False
        frame_line = self._line
        try:
            n_atoms = int(text)
        except ValueError:
            n_atoms = -1
        if n_atoms < 0 or n_atoms > _MAX_ATOMS:
            raise _BadFrameError(
                frame_line,
                f"expected the number of atoms, found {_show(text)}",
                end + 1,
                frame_line + 1,
            )
        count_end = end
        span = self._next_line(count_end + 1)
        frame_start = self._pos  # the buffer may have moved; offsets are relative to here
        count_end = frame_start + (count_end - begin)
        resume, resume_line = count_end + 1, frame_line + 1
        if span is None:
            raise _BadFrameError(
                frame_line, f"truncated frame: the file ends after the count line ({n_atoms})",
                self._end, frame_line + 1,
            )  # fmt: skip
        comment_start, comment_end = span
        try:
            header = _parse_header(self._buf[comment_start:comment_end].decode("utf-8", "replace"))
        except ValueError as exc:
            raise _BadFrameError(frame_line + 1, str(exc), resume, resume_line) from None
        # a comment line without a newline ends the data: no rows, a truncated frame
        rows_offset = min(comment_end + 1, self._end) - frame_start
        return self._parse_atoms(n_atoms, header, frame_line, rows_offset, resume_line)

    def _parse_atoms(
        self, n: int, header: _Header, frame_line: int, rows_offset: int, resume_line: int
    ) -> Frame:
        layout = header.layout
        first_row_line = frame_line + 2
        if n > _PREFETCH_ATOMS:
            # Make sure a huge count line is backed by data before allocating for it. The
            # buffer at most doubles per read, so memory stays within twice the data seen.
            while (held := self._end - self._pos - rows_offset) < 8 * n:  # "H 0 0 0\n"
                if not self._fill(min(8 * n - held, max(self._end - self._pos, _MAX_CHUNK))):
                    raise _BadFrameError(
                        frame_line,
                        f"truncated frame: expected {n} atom lines after line "
                        f"{frame_line + 1}, the file ends before",
                        self._line_start_after_count(self._pos), resume_line,
                    )  # fmt: skip
        positions = np.empty((n, 3), dtype=np.float64)
        numbers = np.empty(n, dtype=np.int32)
        forces = np.empty((n, 3), dtype=np.float64) if layout.forces else _EMPTY_VECTORS
        velocities = np.empty((n, 3), dtype=np.float64) if layout.velocities else _EMPTY_VECTORS
        masses = np.empty(n, dtype=np.float64) if layout.masses else _EMPTY_SCALARS
        at_eof = False
        while True:
            frame_start = self._pos
            start = frame_start + rows_offset
            args = (
                self._view, start, self._end, at_eof, n,
                layout.kinds, layout.groups, layout.components, layout.exact,
                _parse.SYMBOL_TABLE, _parse.POW5_TABLE,
                positions, forces, velocities, masses, numbers, self._slow,
            )  # fmt: skip
            parse_rows = _PARSE_ROWS.entries.get(fingerprint(args)) or _PARSE_ROWS.entry(args)
            status, offset, row, column, n_slow = parse_rows(*args)
            if status == _parse.NEED_MORE:
                done = offset - start
                per_row = done / row if row else 64.0 * len(layout.kinds)
                need = int((n - row) * per_row * 1.25) + 4096 + (self._end - offset)
                # a long first row times a large count is a guess, not data: read at most
                # as much again as the buffer holds, so memory follows the data seen
                need = min(need, max(self._end - self._pos, _MAX_CHUNK))
                if not self._fill(need):
                    at_eof = True
                continue
            if status == _parse.SLOW_OVERFLOW:
                self._slow = np.empty((max(n * len(layout.kinds), 64), 5), dtype=np.int64)
                continue
            break
        if status != _parse.OK:
            line = first_row_line + row
            resume = self._line_start_after_count(frame_start)
            if status == _parse.TRUNCATED:
                reason = (
                    f"truncated frame: expected {n} atom lines after line {frame_line + 1}, "
                    f"the file ends after {row}"
                )
                raise _BadFrameError(frame_line, reason, resume, resume_line)
            token = _token_at(self._buf, offset, self._end)
            if status == _parse.TOO_FEW_COLUMNS:
                reason = (
                    f"expected {len(layout.kinds)}{'' if layout.exact else ' or more'} "
                    f"columns, found {column}: {_show(self._line_at(offset))}"
                )
            elif status == _parse.TOO_MANY_COLUMNS:
                reason = (
                    f"expected {len(layout.kinds)} columns (Properties), found more: "
                    f"{_show(self._line_at(offset))}"
                )
            elif status == _parse.BAD_NUMBER:
                reason = f"column {column + 1}: cannot parse {_show(token)} as a number"
            else:
                reason = f"column {column + 1}: unknown element {_show(token)}"
            raise _BadFrameError(line, reason, resume, resume_line)
        for k in range(n_slow):
            r, group, component, token_start, token_end = self._slow[k].tolist()
            value = float(self._buf[token_start:token_end])
            if group == _parse.POSITIONS:
                positions[r, component] = value
            elif group == _parse.FORCES:
                forces[r, component] = value
            elif group == _parse.VELOCITIES:
                velocities[r, component] = value
            else:
                masses[r] = value
        # consume the frame
        self._pos = offset
        self._line = first_row_line + n
        index = self._index
        self._index += 1
        if layout.velocities is not None and layout.velocities != "fs":
            arrays = (
                velocities, numbers, masses, _parse.STANDARD_MASSES,
                layout.velocities == "momenta", ASE_TIME_IN_FS,
            )  # fmt: skip
            to_velocities = _TO_VELOCITIES.entries.get(fingerprint(arrays))
            (to_velocities or _TO_VELOCITIES.entry(arrays))(*arrays)
        # The arrays are this frame's own and checked above (a Frame built the usual way
        # checks them again: 3.6 us of a 100-atom frame's ~45)
        return Frame._from_owned(
            positions,
            numbers,
            velocities if layout.velocities else None,
            forces if layout.forces else None,
            header.energy,
            header.cell,
            header.pbc,
            index if header.step is None else header.step,
            header.time,
            index,
            self.source,
            header.info,
        )

    def _line_start_after_count(self, frame_start: int) -> int:
        """Where the line after the count line starts (the end of the data if none does)."""
        newline = self._buf.find(b"\n", frame_start, self._end)
        return self._end if newline < 0 else newline + 1

    def _line_at(self, offset: int) -> bytes:
        begin = self._buf.rfind(b"\n", 0, offset) + 1
        end = self._buf.find(b"\n", offset, self._end)
        return bytes(self._buf[begin : end if end >= 0 else self._end])


def _token_at(buf: bytearray, offset: int, end: int) -> bytes:
    stop = offset
    while stop < end and buf[stop] > 32:
        stop += 1
    return bytes(buf[offset:stop])


def _show(text: bytes | bytearray) -> str:
    shown = text.decode("utf-8", "replace").strip()
    return repr(shown if len(shown) <= 80 else shown[:77] + "...")


def iread(
    path: PathLike | BinaryIO, *, skip_bad: bool = False, source: str | None = None
) -> Iterator[Frame]:
    """Stream the frames of an xyz/extxyz(.gz/.bz2/.xz) file; see :class:`XYZReader`.

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "cu.extxyz")
    >>> text = ('2\\nLattice="3.6 0 0 0 3.6 0 0 0 3.6" Properties=species:S:1:pos:R:3:'
    ...         'forces:R:3 energy=-7.1 time=2.0\\n'
    ...         'Cu 0 0 0 0.1 0 0\\nCu 1.8 1.8 0 -0.1 0 0\\n')
    >>> with open(path, "w") as f:
    ...     _ = f.write(text)
    >>> [(f.n_atoms, f.energy, f.time, f.pbc.tolist(), f.forces[0].tolist()) for f in iread(path)]
    [(2, -7.1, 2.0, [True, True, True], [0.1, 0.0, 0.0])]
    """
    return XYZReader(path, skip_bad=skip_bad, source=source)


def warmup() -> None:
    """Compile (or load from Numba's cache) the parsing kernels before the first frame.

    >>> warmup()
    """
    data = io.BytesIO(
        b"2\nProperties=species:S:1:pos:R:3:momenta:R:3:forces:R:3:masses:R:1\n"
        b"H 0 0 0 0 0 0 0 0 0 1.0\nH 0 0 0.74 0 0 0 0 0 0 1.0\n"
    )
    list(XYZReader(data))


# --------------------------------------------------------------------------------------
# writer
# --------------------------------------------------------------------------------------

_SAFE_BARE = re.compile(r"[^\s\"'\\{}\[\]=,]+")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _format_string(text: str) -> str:
    if any(ord(c) < 32 for c in text):
        return _quote("_JSON " + json.dumps(text))  # newlines and other control characters
    if _SAFE_BARE.fullmatch(text) and not text.startswith("_JSON"):
        return text
    return _quote(text)


def _format_scalar(value: Any) -> str | None:
    if isinstance(value, (bool, np.bool_)):
        return "T" if value else "F"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, str):
        return _format_string(value)
    return None


def _format_info_value(key: str, value: Any) -> str | None:
    scalar = _format_scalar(value)
    if scalar is not None:
        return scalar
    if isinstance(value, (np.ndarray, list, tuple)):
        try:
            array = np.asarray(value)
        except ValueError:
            array = np.empty(0, dtype=object)
        if key in _MATRIX_KEYS and array.shape == (3, 3) and array.dtype.kind in "iuf":
            array = array.reshape(9, order="F")
        if array.ndim == 1 and array.size >= 2 and array.dtype.kind in "iufb":
            return '"' + " ".join(str(_format_scalar(x)) for x in array.tolist()) + '"'
        if isinstance(value, np.ndarray):
            value = value.tolist()
    try:
        return _quote("_JSON " + json.dumps(value))
    except (TypeError, ValueError):
        return None


def _open_text_for_writing(path: PathLike, append: bool) -> IO[str]:
    mode = "at" if append else "wt"
    lower = os.fspath(path).lower()
    if lower.endswith((".gz", ".gzip")):
        return cast(IO[str], gzip.open(path, mode, encoding="utf-8", newline="\n"))
    if lower.endswith(".bz2"):
        return cast(IO[str], bz2.open(path, mode, encoding="utf-8", newline="\n"))
    if lower.endswith((".xz", ".lzma")):
        return cast(IO[str], lzma.open(path, mode, encoding="utf-8", newline="\n"))
    return open(path, mode, encoding="utf-8", newline="\n")


class XYZWriter:
    """Write frames as ASE-compatible extxyz, with floats at full (``repr``) precision.

    The comment line holds ``Lattice`` (when the frame has a cell), ``Properties``,
    ``energy``, ``step``, ``time``, ``pbc`` and then ``Frame.info``. Velocities are
    written as ASE ``momenta`` (amu·Å/ASE-time, so ``ase.io.read`` gives the right
    ``get_velocities()``), or with ``velocities="vel"`` as a ``vel`` column in Å/fs,
    which round-trips bit for bit (momenta only to within an ulp: unit conversion).
    A ``.gz``/``.bz2``/``.xz`` path is compressed.

    >>> import io, numpy as np
    >>> out = io.StringIO()
    >>> with XYZWriter(out) as writer:
    ...     writer.write(Frame(np.zeros((1, 3)), [18], energy=-0.5, step=3))
    >>> print(out.getvalue(), end="")
    1
    Properties=species:S:1:pos:R:3 energy=-0.5 step=3 pbc="F F F"
    Ar 0.0 0.0 0.0
    """

    def __init__(
        self,
        path_or_file: PathLike | IO[str],
        *,
        append: bool = False,
        velocities: Literal["momenta", "vel"] = "momenta",
    ) -> None:
        if velocities not in ("momenta", "vel"):
            raise ValueError(f"velocities must be 'momenta' or 'vel', not {velocities!r}")
        self._velocities = velocities
        if isinstance(path_or_file, (str, os.PathLike)):
            self._file: IO[str] | None = _open_text_for_writing(path_or_file, append)
            self._owns_file = True
        else:
            self._file = path_or_file
            self._owns_file = False
        self.frames = 0

    def __enter__(self) -> XYZWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Flush and close (only a file this writer opened). Safe to call twice."""
        file, self._file = self._file, None
        if file is None:
            return
        if self._owns_file:
            file.close()
        else:
            file.flush()

    def write(self, frame: Frame) -> None:
        """Append one frame."""
        if self._file is None:
            raise ValueError("write to a closed XYZWriter")
        self._file.write(self.format(frame))
        self.frames += 1

    def format(self, frame: Frame) -> str:
        """The frame as extxyz text (what :meth:`write` writes)."""
        numbers = frame.numbers
        if numbers.size and (numbers.min() < 0 or numbers.max() >= len(SYMBOLS)):
            raise ValueError(f"atomic numbers outside 0..{len(SYMBOLS) - 1}")
        columns = [frame.positions]
        properties = "species:S:1:pos:R:3"
        if frame.velocities is not None:
            if self._velocities == "momenta":
                masses = MASSES[numbers][:, None]
                columns.append((frame.velocities * ASE_TIME_IN_FS) * masses)
                properties += ":momenta:R:3"
            else:
                columns.append(frame.velocities)
                properties += ":vel:R:3"
        if frame.forces is not None:
            columns.append(frame.forces)
            properties += ":forces:R:3"
        parts = []
        if frame.cell is not None:
            parts.append(
                'Lattice="' + " ".join(repr(x) for x in frame.cell.ravel().tolist()) + '"'
            )
        parts.append("Properties=" + properties)
        if frame.energy is not None:
            parts.append(f"energy={frame.energy!r}")
        parts.append(f"step={frame.step:d}")
        if frame.time is not None:
            parts.append(f"time={frame.time!r}")
        parts.append('pbc="' + " ".join("T" if p else "F" for p in frame.pbc.tolist()) + '"')
        for key, value in frame.info.items():
            if key in _RESERVED_KEYS or not isinstance(key, str) or not _KEY.fullmatch(key):
                logger.warning("extxyz writer: skipped info key %r (reserved or not a name)", key)
                continue
            text = _format_info_value(key, value)
            if text is None:
                logger.warning("extxyz writer: skipped info[%r], not serialisable", key)
                continue
            parts.append(f"{key}={text}")
        data = np.hstack(columns) if len(columns) > 1 else columns[0]
        row = "%-2s" + " %r" * data.shape[1] + "\n"
        symbols = [SYMBOLS[z] for z in numbers.tolist()]
        rows = zip(symbols, data.tolist(), strict=True)
        body = "".join([row % (symbol, *values) for symbol, values in rows])
        return f"{frame.n_atoms}\n{' '.join(parts)}\n{body}"


def write_extxyz(
    path_or_file: PathLike | IO[str],
    frames: Frame | Iterable[Frame],
    *,
    append: bool = False,
    velocities: Literal["momenta", "vel"] = "momenta",
) -> int:
    """Write frames to an extxyz file (see :class:`XYZWriter`); returns how many.

    >>> import os, tempfile, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "dump.extxyz")
    >>> frame = Frame(np.array([[0.0, 0.0, 0.1]]), [29], forces=[[0.0, 0.0, -0.3]],
    ...               energy=-3.5, cell=np.eye(3) * 3.61, step=40, time=80.0)
    >>> write_extxyz(path, [frame])
    1
    >>> back = next(iread(path))
    >>> back.step, back.time, back.energy, back.forces.tolist(), back.cell[0].tolist()
    (40, 80.0, -3.5, [[0.0, 0.0, -0.3]], [3.61, 0.0, 0.0])
    """
    if isinstance(frames, Frame):
        frames = [frames]
    with XYZWriter(path_or_file, append=append, velocities=velocities) as writer:
        for frame in frames:
            writer.write(frame)
        return writer.frames
