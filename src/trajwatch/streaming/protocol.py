"""Wire protocol v1: one ZeroMQ multipart message per :class:`~trajwatch.frame.Frame`.

A message is ``[topic, header, positions, numbers, *optional arrays]``: the topic is the
source name (UTF-8), the header one fixed 136-byte little-endian struct
(:data:`HEADER`), the arrays raw little-endian C-order buffers. ``docs/protocol.md``
documents every byte. Nothing is ever pickled.

>>> import numpy as np
>>> from trajwatch.frame import Frame
>>> frame = Frame(np.zeros((2, 3)), [1, 8], energy=-3.0, step=7)
>>> parts = encode(frame, topic="water", seq=41)
>>> len(parts), len(parts[1])
(4, 136)
>>> back = decode([bytes(memoryview(p)) for p in parts])
>>> back.source, back.seq, back.step, back.energy, back.numbers.tolist()
('water', 41, 7, -3.0, [1, 8])
"""

from __future__ import annotations

import ipaddress
import math
import struct
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
from numpy.typing import DTypeLike, NDArray

from trajwatch.frame import Frame

__all__ = [
    "DEFAULT_MAX_ATOMS",
    "DEFAULT_MAX_BYTES",
    "DTYPE_CODES",
    "FLAG_CELL",
    "FLAG_ENERGY",
    "FLAG_FORCES",
    "FLAG_TIME",
    "FLAG_VELOCITIES",
    "HEADER",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_ATOMIC_NUMBER",
    "VERSION",
    "Header",
    "ProtocolError",
    "check_bind_endpoint",
    "check_numbers",
    "decode",
    "decode_topic",
    "encode",
    "expected_parts",
    "floats_from",
    "is_local_endpoint",
    "make_frame",
    "numbers_from",
    "parse_header",
]

MAGIC: Final = b"TRJW"
VERSION: Final = 1

#: magic, version, dtype, flags, n_atoms, stream_id, seq, step, time, energy, cell[9],
#: pbc bits, 7 reserved bytes (zero), sent_ns (publisher wall clock, ns since the epoch,
#: 0 = unknown). Every field is naturally aligned.
HEADER: Final = struct.Struct("<4sBBHIIQqdd9dB7sQ")
HEADER_SIZE: Final = HEADER.size  # 136

FLAG_VELOCITIES: Final = 0x0001  # a velocities part follows numbers
FLAG_FORCES: Final = 0x0002  # a forces part follows (after velocities if both)
FLAG_ENERGY: Final = 0x0004  # the energy field is valid
FLAG_CELL: Final = 0x0008  # the cell field is valid
FLAG_TIME: Final = 0x0010  # the time field is valid
_KNOWN_FLAGS: Final = FLAG_VELOCITIES | FLAG_FORCES | FLAG_ENERGY | FLAG_CELL | FLAG_TIME

#: dtype code in the header -> wire dtype of positions, velocities and forces.
DTYPE_CODES: Final[dict[int, np.dtype[Any]]] = {
    1: np.dtype("<f8"),
    2: np.dtype("<f4"),
}
_CODE_OF: Final = {dt: code for code, dt in DTYPE_CODES.items()}
_ITEMSIZE: Final = {code: dt.itemsize for code, dt in DTYPE_CODES.items()}
_NUMBERS_DTYPE: Final = np.dtype("<i4")
_RESERVED: Final = bytes(7)
_pack_header: Final = HEADER.pack
_unpack_header: Final = HEADER.unpack

#: atomic numbers must lie in 0..MAX_ATOMIC_NUMBER (0 is a dummy atom)
MAX_ATOMIC_NUMBER: Final = 118
DEFAULT_MAX_ATOMS: Final = 10_000_000
DEFAULT_MAX_BYTES: Final = 1 << 30  # 1 GiB

_NO_CELL: Final = (0.0,) * 9
_MAX_WALL: Final = 2.0**64 / 1e9  # seconds since the epoch that still fit sent_ns


def _read_only(array: NDArray[Any]) -> NDArray[Any]:
    array.setflags(write=False)
    return array


# one shared read-only array per pbc bit pattern, as Frame's own defaults are
_PBC: Final[tuple[NDArray[np.bool_], ...]] = tuple(
    _read_only(np.array([b & 1, b & 2, b & 4], dtype=np.bool_)) for b in range(8)
)
_CELL_DTYPE: Final = np.dtype("<f8")
_CELL_OFFSET: Final = 48
# wire dtypes that already are the Frame's native dtypes (all of them on little-endian)
_NATIVE: Final = {
    code: dt == np.dtype(np.float64) and dt.isnative for code, dt in DTYPE_CODES.items()
}
_NATIVE_CELL: Final = np.dtype(np.float64) == _CELL_DTYPE and _CELL_DTYPE.isnative
_NATIVE_NUMBERS: Final = np.dtype(np.int32) == _NUMBERS_DTYPE and _NUMBERS_DTYPE.isnative
_isfinite = math.isfinite
_max_reduce = np.maximum.reduce


class ProtocolError(ValueError):
    """A message is not a valid protocol v1 frame; the text says why."""


class Header:
    """The decoded, validated header of one message (a plain record).

    ``float_size`` is the wire itemsize of positions/velocities/forces and
    ``n_parts`` the number of parts the whole message must have.
    """

    __slots__ = (
        "cell",
        "code",
        "dtype",
        "energy",
        "flags",
        "float_size",
        "n_atoms",
        "n_parts",
        "native",
        "pbc",
        "sent_ns",
        "seq",
        "step",
        "stream_id",
        "time",
    )

    def __init__(
        self,
        code: int,
        flags: int,
        n_atoms: int,
        stream_id: int,
        seq: int,
        step: int,
        time: float | None,
        energy: float | None,
        cell: NDArray[np.float64] | None,
        pbc: int,
        sent_ns: int = 0,
    ) -> None:
        self.code = code
        self.flags = flags
        self.n_atoms = n_atoms
        self.stream_id = stream_id
        self.seq = seq
        self.step = step
        self.time = time
        self.energy = energy
        self.cell = cell
        self.pbc = pbc
        self.sent_ns = sent_ns
        self.dtype = DTYPE_CODES[code]
        self.float_size = self.dtype.itemsize
        self.native = _NATIVE[code]
        self.n_parts = 4 + (flags & FLAG_VELOCITIES) + ((flags & FLAG_FORCES) >> 1)

    def pbc_array(self) -> NDArray[np.bool_]:
        """The pbc bits as a (3,) bool array: read-only, one shared by every header with
        these bits (as Frame's own default pbc are)."""
        return _PBC[self.pbc]


def expected_parts(flags: int) -> int:
    """Number of message parts a header with these flags announces.

    >>> expected_parts(0), expected_parts(FLAG_VELOCITIES | FLAG_FORCES | FLAG_ENERGY)
    (4, 6)
    """
    return 4 + (flags & FLAG_VELOCITIES) + ((flags & FLAG_FORCES) >> 1)


def _wire_array(array: NDArray[Any] | None, dtype: np.dtype[Any], name: str) -> NDArray[Any]:
    """The array as a C-contiguous buffer of ``dtype``; the array itself when it already is."""
    if array is None:  # pragma: no cover - guarded by callers
        raise ProtocolError(f"{name} is missing")
    if array.dtype == dtype and array.flags.c_contiguous:
        return array
    return np.ascontiguousarray(array, dtype=dtype)


def encode(
    frame: Frame,
    *,
    topic: str | None = None,
    dtype: DTypeLike = np.float64,
    seq: int | None = None,
    stream_id: int = 0,
    sent_ns: int | None = None,
) -> list[Any]:
    """The message parts for ``frame``: ``[topic, header, positions, numbers, *optional]``.

    ``topic`` defaults to ``frame.source``, ``seq`` to ``frame.seq``, ``sent_ns`` (wall
    clock, ns since the epoch; 0 = unknown) to ``frame.wall_time``. Float arrays go out as
    ``dtype`` (float64 or float32). Arrays that already are little-endian C-contiguous of
    the wire dtype are returned as they are (zero-copy), so do not modify a frame's arrays
    until the send has completed.

    >>> import numpy as np
    >>> from trajwatch.frame import Frame
    >>> parts = encode(Frame(np.ones((3, 3)), [6, 1, 1]), dtype=np.float32)
    >>> [len(memoryview(p).cast("B")) for p in parts]
    [0, 136, 36, 12]
    """
    wire = np.dtype(dtype).newbyteorder("<")
    code = _CODE_OF.get(wire)
    if code is None:
        raise ValueError(f"wire dtype must be float64 or float32, not {np.dtype(dtype)}")
    positions = frame.positions
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions has shape {positions.shape}, expected (n_atoms, 3)")
    n_atoms = int(positions.shape[0])
    parts: list[Any] = [
        (frame.source if topic is None else topic).encode("utf-8"),
        b"",  # header, filled in below
        _wire_array(positions, wire, "positions"),
        _wire_array(frame.numbers, _NUMBERS_DTYPE, "numbers"),
    ]
    if parts[3].shape != (n_atoms,):
        raise ValueError(f"numbers has shape {parts[3].shape}, expected ({n_atoms},)")
    flags = 0
    for flag, array, name in (
        (FLAG_VELOCITIES, frame.velocities, "velocities"),
        (FLAG_FORCES, frame.forces, "forces"),
    ):
        if array is not None:
            if array.shape != (n_atoms, 3):
                raise ValueError(f"{name} has shape {array.shape}, expected ({n_atoms}, 3)")
            flags |= flag
            parts.append(_wire_array(array, wire, name))
    energy = frame.energy
    if energy is not None:
        flags |= FLAG_ENERGY
    time = frame.time
    if time is not None:
        flags |= FLAG_TIME
    cell: Sequence[float] = _NO_CELL
    if frame.cell is not None:
        flags |= FLAG_CELL
        cell = frame.cell.ravel().tolist()
    pbc = frame.pbc
    if sent_ns is None:
        wall = frame.wall_time
        sent_ns = int(wall * 1e9) if wall is not None and 0 < wall < _MAX_WALL else 0
    try:
        parts[1] = _pack_header(
            MAGIC,
            VERSION,
            code,
            flags,
            n_atoms,
            stream_id,
            frame.seq if seq is None else seq,
            frame.step,
            0.0 if time is None else time,
            0.0 if energy is None else energy,
            *cell,
            (1 if pbc[0] else 0) | (2 if pbc[1] else 0) | (4 if pbc[2] else 0),
            _RESERVED,
            sent_ns,
        )
    except struct.error as exc:  # seq/step/stream_id/sent_ns out of their integer ranges
        raise ValueError(f"cannot encode frame header: {exc}") from None
    return parts


def _remember_cell(cell: list[float], array: NDArray[np.float64]) -> None:
    global _last_cell
    array.setflags(write=False)
    _last_cell = (cell, array)  # one assignment: a thread reads the old pair or the new


#: the latest cell parse_header decoded, as the header's numbers and the read-only array
#: it returned (a copy costs ~0.5 us a frame; a list compare ~0.1)
_last_cell: tuple[list[float], NDArray[np.float64]] = ([], np.empty((3, 3)))


def parse_header(
    data: Any,
    *,
    max_atoms: int = DEFAULT_MAX_ATOMS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Header:
    """Validate and unpack the header part (bytes or any buffer). Raises ProtocolError.

    Checks magic, version, dtype code, flags, pbc bits, reserved bytes, finite cell and
    time, and that the message the header announces fits ``max_atoms``/``max_bytes``.
    """
    if len(data) != HEADER_SIZE:
        raise ProtocolError(f"header has {len(data)} bytes, expected {HEADER_SIZE}")
    (
        magic,
        version,
        code,
        flags,
        n_atoms,
        stream_id,
        seq,
        step,
        time,
        energy,
        *cell,
        pbc,
        reserved,
        sent_ns,
    ) = _unpack_header(data)
    if (
        magic != MAGIC
        or version != VERSION
        or code not in _ITEMSIZE
        or flags & ~_KNOWN_FLAGS
        or pbc & ~7
        or reserved != _RESERVED
    ):
        _reject_prefix(magic, version, code, flags, pbc)
    if n_atoms > max_atoms:
        raise ProtocolError(f"n_atoms {n_atoms} exceeds the limit of {max_atoms}")
    n_float = 1 + (flags & FLAG_VELOCITIES) + ((flags & FLAG_FORCES) >> 1)
    size = HEADER_SIZE + n_atoms * (3 * _ITEMSIZE[code] * n_float + 4)
    if size > max_bytes:
        raise ProtocolError(f"message of {size} bytes exceeds the limit of {max_bytes}")
    cell_array: NDArray[np.float64] | None = None
    if flags & FLAG_CELL:
        # the sum of finite numbers is finite unless it overflows: one test, usually
        if not _isfinite(sum(cell)) and not all(map(_isfinite, cell)):
            raise ProtocolError("cell has non-finite entries")
        last_cell, cell_array = _last_cell
        if cell != last_cell:  # a cell seldom changes: its frames share one array
            # astype copies: a fresh, owned, native-order array, never a view of ``data``
            wire = np.ndarray((3, 3), _CELL_DTYPE, data, _CELL_OFFSET)
            cell_array = wire.copy() if _NATIVE_CELL else wire.astype(np.float64)
            _remember_cell(cell, cell_array)
    if flags & FLAG_TIME and not _isfinite(time):
        raise ProtocolError(f"time is {time}")
    return Header(
        code,
        flags,
        n_atoms,
        stream_id,
        seq,
        step,
        time if flags & FLAG_TIME else None,
        energy if flags & FLAG_ENERGY else None,
        cell_array,
        pbc,
        sent_ns,
    )


def _reject_prefix(magic: bytes, version: int, code: int, flags: int, pbc: int) -> None:
    """Raise the ProtocolError for the first bad fixed field of a header."""
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {version}, expected {VERSION}")
    if code not in _ITEMSIZE:
        raise ProtocolError(f"unknown dtype code {code} (1 = float64, 2 = float32)")
    if flags & ~_KNOWN_FLAGS:
        raise ProtocolError(f"unknown flag bits 0x{flags & ~_KNOWN_FLAGS:04x}")
    if pbc & ~7:
        raise ProtocolError(f"pbc byte 0x{pbc:02x} has bits other than 0-2 set")
    raise ProtocolError("reserved header bytes are not zero")


def check_numbers(numbers: NDArray[Any]) -> None:
    """Raise ProtocolError unless all atomic numbers lie in 0..MAX_ATOMIC_NUMBER."""
    # Viewed as unsigned, a negative number is huge: one reduction checks both ends.
    if numbers.size and int(_max_reduce(numbers.view(np.uint32))) > MAX_ATOMIC_NUMBER:
        bad = numbers[(numbers < 0) | (numbers > MAX_ATOMIC_NUMBER)]
        raise ProtocolError(f"atomic number {int(bad[0])} outside 0..{MAX_ATOMIC_NUMBER}")


def make_frame(
    header: Header,
    source: str,
    positions: NDArray[np.float64],
    numbers: NDArray[np.int32],
    velocities: NDArray[np.float64] | None,
    forces: NDArray[np.float64] | None,
) -> Frame:
    """Build the Frame from a validated header and freshly made, owned arrays.

    The arrays must be C-contiguous, native float64 (numbers int32), own their data
    and have the shapes the header announces: decode and Subscriber guarantee it, so the
    frame takes them without Frame.__init__'s checks and copies.
    """
    return Frame._from_owned(
        positions,
        numbers,
        velocities,
        forces,
        header.energy,
        header.cell,
        header.pbc_array(),
        header.step,
        header.time,
        header.seq,
        source,
        wall_time=header.sent_ns * 1e-9 if header.sent_ns else None,
    )


def decode_topic(data: Any) -> str:
    """The topic part as a str; ProtocolError unless it is valid UTF-8."""
    try:
        return str(data, "utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"topic is not valid UTF-8: {exc}") from None


def floats_from(view: Any, header: Header, name: str) -> NDArray[np.float64]:
    """One float part as a fresh, owned (n_atoms, 3) float64 array (exactly one copy)."""
    n = header.n_atoms
    expected = n * 3 * header.float_size
    nbytes = len(view)  # bytes, 1-D byte memoryview or zmq.Frame
    if nbytes != expected:
        raise ProtocolError(
            f"{name} has {nbytes} bytes, expected {expected} ({n} atoms x 3 x {header.float_size})"
        )
    wire = np.ndarray((n, 3), header.dtype, view)
    # a copy either way: native float64, C order, owning its data (copy() is the cheaper
    # call when the wire dtype already is native float64, as on every little-endian host)
    out: NDArray[np.float64] = wire.copy() if header.native else wire.astype(np.float64)
    return out


def numbers_from(view: Any, n_atoms: int) -> NDArray[np.int32]:
    """The numbers part as a fresh, owned int32 array (sizes checked, values not)."""
    nbytes = len(view)  # bytes, 1-D byte memoryview or zmq.Frame
    if nbytes != 4 * n_atoms:
        raise ProtocolError(f"numbers has {nbytes} bytes, expected {4 * n_atoms}")
    wire = np.ndarray((n_atoms,), _NUMBERS_DTYPE, view)
    out: NDArray[np.int32] = wire.copy() if _NATIVE_NUMBERS else wire.astype(np.int32)
    return out


def decode(
    parts: Sequence[Any],
    *,
    max_atoms: int = DEFAULT_MAX_ATOMS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Frame:
    """The Frame carried by one message; ProtocolError (a ValueError) if it is not valid.

    ``parts`` may be bytes, memoryviews, arrays or ``zmq.Frame`` objects (``copy=False``).
    Every size is checked against the header before anything is allocated, and the Frame
    owns its arrays: nothing aliases the receive buffers.

    >>> decode([b"x", b"JUNK"])
    Traceback (most recent call last):
    ...
    trajwatch.streaming.protocol.ProtocolError: message has 2 parts, expected at least 4
    """
    if len(parts) < 4:
        raise ProtocolError(f"message has {len(parts)} parts, expected at least 4")
    views = [_byte_view(part, index) for index, part in enumerate(parts, 1)]
    header = parse_header(views[1], max_atoms=max_atoms, max_bytes=max_bytes)
    if len(views) != header.n_parts:
        raise ProtocolError(
            f"message has {len(views)} parts, flags 0x{header.flags:04x} announce {header.n_parts}"
        )
    total = sum(view.nbytes for view in views)
    if total > max_bytes:
        raise ProtocolError(f"message of {total} bytes exceeds the limit of {max_bytes}")
    source = decode_topic(views[0])
    numbers = numbers_from(views[3], header.n_atoms)
    check_numbers(numbers)
    positions = floats_from(views[2], header, "positions")
    index = 4
    velocities = forces = None
    if header.flags & FLAG_VELOCITIES:
        velocities = floats_from(views[index], header, "velocities")
        index += 1
    if header.flags & FLAG_FORCES:
        forces = floats_from(views[index], header, "forces")
    return make_frame(header, source, positions, numbers, velocities, forces)


def _byte_view(part: Any, index: int) -> memoryview:
    """A flat byte view of one part (bytes, memoryview, array or zmq.Frame)."""
    buffer = getattr(part, "buffer", None)  # zmq.Frame
    try:
        view = memoryview(part if buffer is None else buffer)
        if view.ndim == 1 and view.format == "B":
            return view
        if view.nbytes == 0:
            return memoryview(b"")
        return view.cast("B")
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"part {index} is not a contiguous buffer: {exc}") from None


_LOOPBACK_NAMES: Final = frozenset({"localhost", "lo", "lo0", "ip6-localhost"})


def is_local_endpoint(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// endpoints on a loopback address.

    >>> is_local_endpoint("tcp://127.0.0.1:5555"), is_local_endpoint("tcp://[::1]:*")
    (True, True)
    >>> is_local_endpoint("tcp://0.0.0.0:5555"), is_local_endpoint("tcp://*:5555")
    (False, False)
    """
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        return False
    if scheme in ("ipc", "inproc"):
        return True
    if scheme not in ("tcp", "ws", "wss"):
        return False  # pgm, epgm, udp, vmci...: multicast or remote by nature
    host = rest.split("/", 1)[0].rpartition(":")[0].split(";")[-1]
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind_endpoint(endpoint: str, allow_remote: bool) -> None:
    """Raise ValueError when binding ``endpoint`` would listen beyond this machine."""
    if not allow_remote and not is_local_endpoint(endpoint):
        raise ValueError(
            f"refusing to bind {endpoint!r}: it is not a loopback address and anyone who "
            "can reach it could feed or read frames; bind 127.0.0.1 (the default) or pass "
            "allow_remote=True to listen on other interfaces"
        )
