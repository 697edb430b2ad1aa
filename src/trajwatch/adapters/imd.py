"""IMDv3 receiver: read an Interactive Molecular Dynamics v3 stream, yield Frames.

The engine listens (LAMMPS ``fix imd PORT version 3``, GROMACS ``-imdport``, NAMD
``IMDon``); :class:`ImdClient` connects, reads the handshake and session info, sends
``IMD_GO`` and then reads one IMD frame per transmitted step. The wire format, from the
IMDv3 specification:

* every packet starts with an 8-byte header, two big-endian int32: type and length;
* handshake: type 4 (``IMD_HANDSHAKE``), length 3 = the version, written in the
  *engine's* byte order, which is how a receiver learns it; all bodies use that order;
* session info: type 10, length 7, then 7 bytes, non-zero when present: time, energies,
  box, coordinates, coordinates wrapped, velocities, forces;
* the receiver answers ``IMD_GO`` (type 3); per IMD frame the engine then sends, in this
  order and only what the session announced: time (type 12, length 1; float64 dt,
  float64 time, int64 step), energies (1, length 1; int32 step, 9 float32: temperature,
  total, potential, van der Waals, Coulomb, bonds, angles, dihedrals, impropers), box
  (13, length 1; 9 float32, rows a, b, c), coordinates (2), velocities (14), forces (15)
  (length n_atoms; n_atoms × 3 float32 each);
* the receiver may send ``IMD_PAUSE`` (7), ``IMD_RESUME`` (11), ``IMD_KILL`` (5) and
  ``IMD_DISCONNECT`` (0), header only.

Units are the engine's (see :func:`~trajwatch.adapters.units.imd_units`): LAMMPS sends
its ``units`` style unconverted, GROMACS the specification's Å, ps, kJ/mol, NAMD Å, ps and
kcal/mol. IMD carries no elements: the caller gives the atomic numbers.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

from trajwatch.adapters.inprocess import FrameTarget
from trajwatch.adapters.units import UnitSystem
from trajwatch.frame import Frame

__all__ = [
    "BridgeStats",
    "ImdClient",
    "ImdProtocolError",
    "SessionInfo",
    "parse_address",
    "run_bridge",
]

logger = logging.getLogger("trajwatch.adapters")

IMD_DISCONNECT: Final = 0
IMD_ENERGIES: Final = 1
IMD_FCOORDS: Final = 2
IMD_GO: Final = 3
IMD_HANDSHAKE: Final = 4
IMD_KILL: Final = 5
IMD_PAUSE: Final = 7
IMD_SESSIONINFO: Final = 10
IMD_RESUME: Final = 11
IMD_TIME: Final = 12
IMD_BOX: Final = 13
IMD_VELOCITIES: Final = 14
IMD_FORCES: Final = 15

_HEADER: Final = struct.Struct("!ii")
_NAMES: Final = {
    IMD_ENERGIES: "energies",
    IMD_FCOORDS: "coordinates",
    IMD_TIME: "time",
    IMD_BOX: "box",
    IMD_VELOCITIES: "velocities",
    IMD_FORCES: "forces",
}
DEFAULT_MAX_ATOMS: Final = 10_000_000


class ImdProtocolError(ValueError):
    """The engine sent something that is not IMDv3 as specified; the text says what."""


@dataclass(frozen=True)
class SessionInfo:
    """What the engine announced it sends with every IMD frame."""

    version: int
    byte_order: str  # "<" or ">": the engine's, used by every body
    time: bool
    energies: bool
    box: bool
    positions: bool
    wrapped: bool
    velocities: bool
    forces: bool


def parse_address(text: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (or just ``"PORT"``, on 127.0.0.1) -> ``(host, port)``.

    >>> parse_address("localhost:8888"), parse_address("8888")
    (('localhost', 8888), ('127.0.0.1', 8888))
    """
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8888")
    return host.strip("[]") or "127.0.0.1", int(port)


class ImdClient:
    """Connect to an engine's IMDv3 port and read its frames (forward-only, no length).

    ``numbers``: the atomic numbers in IMD order (IMD sends none). ``units``: what the
    engine sends (:func:`~trajwatch.adapters.units.imd_units`). ``connect_timeout``:
    how long to keep trying while the engine is not listening yet; ``timeout``: the
    longest wait for the next frame before :meth:`recv` gives up (None waits forever).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        numbers: ArrayLike,
        units: UnitSystem,
        source: str = "imd",
        connect_timeout: float = 30.0,
        timeout: float | None = 600.0,
        max_atoms: int = DEFAULT_MAX_ATOMS,
    ) -> None:
        self.numbers: NDArray[np.int32] = np.array(numbers, dtype=np.int32)
        if self.numbers.ndim != 1 or self.numbers.size == 0:
            raise ValueError("numbers must be a non-empty sequence of atomic numbers")
        self.numbers.setflags(write=False)
        self.units = units
        self.source = source
        self.max_atoms = max_atoms
        self.frames_received = 0
        self._sock = _connect(host, port, connect_timeout)
        self._header = bytearray(_HEADER.size)
        try:
            self._sock.settimeout(max(connect_timeout, 1.0))
            self.session = self._handshake()
            self._sock.settimeout(timeout)
            self._send(IMD_GO)
        except BaseException:
            self._sock.close()
            raise
        order = self.session.byte_order
        self._f32 = np.dtype(f"{order}f4")
        self._time = struct.Struct(f"{order}ddq")
        self._energies = struct.Struct(f"{order}i9f")

    # -- handshake ---------------------------------------------------------------------

    def _handshake(self) -> SessionInfo:
        kind, raw = self._read_header(allow_eof=False)
        if kind != IMD_HANDSHAKE:
            raise ImdProtocolError(f"expected the handshake (type 4), got type {kind}")
        version_bytes = struct.pack("!i", raw)  # the length slot as sent, byte for byte
        for order in (">", "<"):
            (version,) = struct.unpack(f"{order}i", version_bytes)
            if version in (2, 3):
                break
        else:
            raise ImdProtocolError(f"unknown IMD version in handshake: {version_bytes.hex()}")
        if version != 3:
            raise ImdProtocolError(
                "the engine speaks IMDv2 (coordinates only); configure it for IMD version 3"
            )
        kind, length = self._read_header(allow_eof=False)
        if kind != IMD_SESSIONINFO or length != 7:
            raise ImdProtocolError(
                f"expected session info (type 10, length 7), got type {kind} length {length}"
            )
        flags = [b != 0 for b in self._read(7)]
        time_, energies, box, positions, wrapped, velocities, forces = flags
        return SessionInfo(3, order, time_, energies, box, positions, wrapped, velocities, forces)

    # -- reading frames ------------------------------------------------------------------

    def recv(self) -> Frame | None:
        """The next frame, or None when the engine has ended the session."""
        s = self.session
        units = self.units
        try:
            first = True
            step = self.frames_received
            sim_time = energy = None
            cell = None
            positions = velocities = forces = None
            if s.time:
                self._expect(IMD_TIME, 1, first)
                first = False
                _dt, sim_time, step = self._time.unpack(self._read(24))
                sim_time *= units.time
            if s.energies:
                self._expect(IMD_ENERGIES, 1, first)
                first = False
                values = self._energies.unpack(self._read(40))
                if not s.time:
                    step = values[0]
                energy = float(values[3]) * units.energy
            if s.box:
                self._expect(IMD_BOX, 1, first)
                first = False
                box = np.frombuffer(self._read(36), dtype=self._f32).astype(np.float64)
                if box.any():
                    cell = box.reshape(3, 3) * units.length
            if s.positions:
                positions = self._vectors(IMD_FCOORDS, units.length, first)
                first = False
            if s.velocities:
                velocities = self._vectors(IMD_VELOCITIES, units.velocity, first)
                first = False
            if s.forces:
                forces = self._vectors(IMD_FORCES, units.force, first)
        except EOFError:
            return None
        if positions is None:
            raise ImdProtocolError("the session sends no coordinates: nothing to watch")
        frame = Frame(
            positions,
            self.numbers,
            velocities=velocities,
            forces=forces,
            energy=energy,
            cell=cell,
            pbc=None if cell is None else (True, True, True),
            step=int(step),
            time=None if sim_time is None else float(sim_time),
            seq=self.frames_received,
            source=self.source,
            copy=False,
        )
        self.frames_received += 1
        return frame

    def __iter__(self) -> Iterator[Frame]:
        """Frames until the engine ends the session."""
        while (frame := self.recv()) is not None:
            yield frame

    def _expect(self, kind: int, length: int, first: bool) -> None:
        got, got_length = self._read_header(allow_eof=first)
        if got != kind:
            raise ImdProtocolError(
                f"expected a {_NAMES[kind]} packet (type {kind}), got type {got}"
            )
        if got_length != length:
            raise ImdProtocolError(
                f"{_NAMES[kind]} packet has length {got_length}, expected {length}"
            )

    def _vectors(self, kind: int, scale: float, first: bool) -> NDArray[np.float64]:
        got, n = self._read_header(allow_eof=first)
        if got != kind:
            raise ImdProtocolError(f"expected a {_NAMES[kind]} packet (type {kind}), got {got}")
        if n != self.numbers.size:
            if not 0 < n <= self.max_atoms:
                raise ImdProtocolError(f"{_NAMES[kind]} packet announces {n} atoms")
            raise ValueError(
                f"the engine sends {n} atoms but {self.numbers.size} atomic numbers were "
                "given: check --elements/--topology"
            )
        raw = np.frombuffer(self._read(12 * n), dtype=self._f32).reshape(n, 3)
        out = raw.astype(np.float64)  # a fresh owned array, widened from float32
        out *= scale
        return out

    def _read_header(self, allow_eof: bool) -> tuple[int, int]:
        try:
            self._read_into(self._header)
        except EOFError:
            if allow_eof:
                raise
            raise ImdProtocolError("the engine closed the connection mid-frame") from None
        kind, length = _HEADER.unpack(self._header)
        return kind, length

    def _read(self, n: int) -> bytearray:
        buffer = bytearray(n)
        try:
            self._read_into(buffer)
        except EOFError:
            raise ImdProtocolError("the engine closed the connection mid-packet") from None
        return buffer

    def _read_into(self, buffer: bytearray) -> None:
        view = memoryview(buffer)
        got = 0
        while got < len(buffer):
            try:
                n = self._sock.recv_into(view[got:])
            except TimeoutError:
                raise TimeoutError("no data from the engine within the timeout") from None
            except (ConnectionResetError, BrokenPipeError):
                n = 0
            if n == 0:
                raise EOFError
            got += n

    # -- requests to the engine ----------------------------------------------------------

    def _send(self, kind: int, length: int = 0) -> None:
        self._sock.sendall(_HEADER.pack(kind, length))

    def pause(self) -> None:
        """Ask the engine to pause (idempotent in IMDv3)."""
        self._send(IMD_PAUSE)

    def resume(self) -> None:
        """Ask a paused engine to go on."""
        self._send(IMD_RESUME)

    def kill(self, wait: float = 5.0) -> None:
        """Ask the engine to end the simulation, and close once it has (or after ``wait`` s).

        Frames still coming are read and dropped meanwhile: an engine blocked on a full
        socket would never read the request. LAMMPS then stops with the error "LAMMPS
        terminated on IMD request"; GROMACS honours it only when run with ``-imdterm``.
        """
        self._send(IMD_KILL)
        self._sock.settimeout(0.2)
        deadline = time.monotonic() + wait
        sink = bytearray(1 << 16)
        while time.monotonic() < deadline:
            try:
                if self._sock.recv_into(sink) == 0:
                    break  # the engine closed the connection
            except TimeoutError:
                continue
            except OSError:
                break
        self.close(disconnect=False)

    def close(self, disconnect: bool = True) -> None:
        """Send ``IMD_DISCONNECT`` (unless told not to) and close the socket."""
        if self._sock.fileno() < 0:
            return
        if disconnect:
            with contextlib.suppress(OSError):  # the engine has gone already
                self._send(IMD_DISCONNECT)
        self._sock.close()

    def __enter__(self) -> ImdClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    """Connect, retrying while the engine is not listening yet (it may still be starting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=max(timeout, 1.0))
        except (ConnectionRefusedError, TimeoutError, OSError) as error:
            if time.monotonic() >= deadline:
                raise ConnectionError(
                    f"no IMD engine listening on {host}:{port} within {timeout:g} s: {error}"
                ) from None
            time.sleep(0.1)
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


@dataclass
class BridgeStats:
    """What :func:`run_bridge` did."""

    frames: int = 0
    seconds: float = 0.0
    stopped: str = ""  # "", or the action taken on alarm

    def line(self) -> str:
        rate = self.frames / self.seconds if self.seconds > 0 else 0.0
        tail = f", stopped the engine ({self.stopped}) on alarm" if self.stopped else ""
        return f"{self.frames} frames in {self.seconds:.1f} s ({rate:.0f}/s){tail}"


ON_ALARM: Final = ("none", "pause", "kill", "detach")


def run_bridge(
    client: ImdClient,
    target: FrameTarget,
    *,
    on_alarm: str = "none",
    max_frames: int | None = None,
) -> BridgeStats:
    """Forward every frame from ``client`` to ``target`` until the session ends.

    When the target asks to stop (a Watch after an alarm), ``on_alarm`` says what to ask of
    the engine: ``pause`` (it waits; the connection stays open: resume or close the client
    when done), ``kill`` (end the simulation), ``detach`` (disconnect, the engine runs
    on or waits for a client, as configured) or ``none`` (keep forwarding).
    """
    if on_alarm not in ON_ALARM:
        raise ValueError(f"on_alarm must be one of {ON_ALARM}, not {on_alarm!r}")
    stats = BridgeStats()
    start = time.perf_counter()
    try:
        for frame in client:
            target.send(frame)
            stats.frames += 1
            if on_alarm != "none" and getattr(target, "stop_requested", False):
                stats.stopped = on_alarm
                _stop_engine(client, on_alarm)
                break
            if max_frames is not None and stats.frames >= max_frames:
                break
    finally:
        stats.seconds = time.perf_counter() - start
    return stats


def _stop_engine(client: ImdClient, action: str) -> None:
    logger.warning("alarm: asking the engine to %s", action)
    if action == "pause":
        client.pause()  # the caller keeps the connection open while the engine waits
    elif action == "kill":
        client.kill()
    else:
        client.close()
