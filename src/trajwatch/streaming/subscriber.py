"""The monitor side of the socket: :class:`Subscriber` turns protocol v1 messages into frames.

Every message is validated; a malformed one is counted, logged (rate-limited, logger
``trajwatch.streaming``) and skipped, never raised. Sequence numbers give the frames lost
per source (at a high-water mark, or while reconnecting) and publisher restarts.

>>> import numpy as np
>>> from trajwatch.frame import Frame
>>> from trajwatch.streaming.publisher import Publisher
>>> with Publisher("tcp://127.0.0.1:*", topic="demo") as pub, \\
...         Subscriber(pub.endpoint) as sub:
...     pub.wait_for_subscriber(timeout=5.0)
...     pub.send(Frame(np.zeros((2, 3)), [8, 1], step=3))
...     frame = sub.recv(timeout=5.0)
...     frame.source, frame.step, frame.numbers.tolist(), sub.stats.received
True
True
('demo', 3, [8, 1], 1)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final

import numpy as np
import zmq
from numpy.typing import NDArray

from trajwatch.frame import Frame
from trajwatch.streaming.protocol import (
    DEFAULT_MAX_ATOMS,
    DEFAULT_MAX_BYTES,
    FLAG_FORCES,
    FLAG_VELOCITIES,
    Header,
    ProtocolError,
    check_bind_endpoint,
    check_numbers,
    decode_topic,
    floats_from,
    make_frame,
    numbers_from,
    parse_header,
)
from trajwatch.streaming.security import Curve, Gatekeeper
from trajwatch.streaming.sockets import OwnedSocket

__all__ = ["SourceStats", "Subscriber", "SubscriberStats"]

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
logger = logging.getLogger("trajwatch.streaming")

_NOBLOCK: Final = int(zmq.NOBLOCK)  # a plain int: enum arithmetic costs per call
_LOG_INTERVAL: Final = 1.0  # seconds between two malformed-message log lines


@dataclass
class SourceStats:
    """Counters for one source (topic)."""

    received: int = 0
    lost: int = 0
    restarts: int = 0
    last_seq: int = -1
    stream_id: int = 0


@dataclass
class SubscriberStats:
    """What a :class:`Subscriber` has seen.

    ``lost`` counts frames missing from the sequence numbers (dropped at a high-water
    mark or sent while disconnected); ``restarts`` counts publishers that started over
    (new stream id, or a sequence number that went back).
    """

    received: int = 0
    malformed: int = 0
    lost: int = 0
    restarts: int = 0
    per_source: dict[str, SourceStats] = field(default_factory=dict)
    last_error: str = ""


class _MalformedError(Exception):
    """Internal: the message being read is bad (reason in args[0])."""


class Subscriber:
    """Receive :class:`~trajwatch.frame.Frame` objects over ZeroMQ (wire protocol v1).

    SUB socket by default (``topics`` are prefixes of source names to receive); PULL
    with ``lossless=True`` (the topics then filter in software). ``max_atoms`` and
    ``max_bytes`` bound what one message may make us allocate. ``curve`` (a
    :class:`~trajwatch.streaming.security.CurveClient` or ``CurveServer``) encrypts and
    authenticates the connection (``docs/security.md``). A live stream is forward-only:
    it has no length and cannot rewind. Not thread-safe: one thread receives.
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        bind: bool = False,
        topics: Sequence[str] = ("",),
        lossless: bool = False,
        hwm: int = 1000,
        context: zmq.Context[Any] | None = None,
        max_atoms: int = DEFAULT_MAX_ATOMS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_sources: int = 10_000,
        allow_remote: bool = False,
        curve: Curve | None = None,
    ) -> None:
        if isinstance(topics, str):
            raise TypeError("topics must be a sequence of str, e.g. ('',) or ('md1',)")
        if bind:
            check_bind_endpoint(endpoint, allow_remote)
        if hwm < 0:
            raise ValueError(f"hwm must be >= 0, not {hwm}")
        self.lossless = lossless
        self.max_atoms = int(max_atoms)
        self.max_bytes = int(max_bytes)
        self.max_sources = int(max_sources)
        self.stats = SubscriberStats()
        self._topics = tuple(topics)
        self._filter: tuple[str, ...] | None = (
            self._topics if lossless and "" not in self._topics else None
        )
        self._sources: dict[bytes, str] = {}
        # per source, the last numbers part and the read-only array checked from it,
        # which that source's frames share while the part stays the same
        self._numbers: dict[str, tuple[bytes, NDArray[np.int32]]] = {}
        self._timeout_ms = -2  # RCVTIMEO currently set on the socket (-2: unknown)
        self._next_log = 0.0
        self._suppressed = 0
        self._next_loss_log = 0.0

        def configure(socket: zmq.Socket[Any]) -> None:
            socket.setsockopt(zmq.RCVHWM, hwm)
            # libzmq drops a peer that sends a part larger than this, before allocating it
            socket.setsockopt(zmq.MAXMSGSIZE, min(self.max_bytes, (1 << 63) - 1))
            if not lossless:
                for topic in self._topics:
                    socket.setsockopt(zmq.SUBSCRIBE, topic.encode("utf-8"))

        self._owned = OwnedSocket(
            zmq.PULL if lossless else zmq.SUB,
            endpoint,
            bind=bind,
            context=context,
            curve=curve,
            configure=configure,
        )
        self._socket = self._owned.socket
        #: a CURVE server's allow-list, with counts of accepted and refused clients
        self.gatekeeper: Gatekeeper | None = self._owned.gatekeeper
        #: the endpoint actually bound or connected (a wildcard port resolved)
        self.endpoint = self._owned.endpoint

    @property
    def closed(self) -> bool:
        return bool(self._socket.closed)

    @property
    def socket(self) -> zmq.Socket[Any]:
        """The underlying socket (for a poller; do not receive from it directly)."""
        return self._socket

    # -- receiving -------------------------------------------------------------------

    def recv(self, timeout: float | None = None) -> Frame | None:
        """The next valid frame, or None if none arrived within ``timeout`` seconds.

        ``None`` waits forever. Malformed messages are counted and skipped.
        """
        if timeout is None:
            deadline = None
            ms = -1
        else:
            deadline = time.monotonic() + timeout
            ms = max(0, math.ceil(timeout * 1000))
        while True:
            if ms != self._timeout_ms:
                self._socket.setsockopt(zmq.RCVTIMEO, ms)
                self._timeout_ms = ms
            try:
                frame = self._read_message()
            except zmq.Again:
                return None
            if frame is not None:
                return frame
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                ms = max(0, math.ceil(left * 1000))

    def __iter__(self) -> Iterator[Frame]:
        """Frames as they arrive, forever (until the subscriber is closed)."""
        while not self._socket.closed:
            frame = self.recv(None)
            if frame is not None:
                yield frame

    def frames(self, idle_timeout: float) -> Iterator[Frame]:
        """Frames as they arrive, until none has come for ``idle_timeout`` seconds."""
        while not self._socket.closed:
            frame = self.recv(idle_timeout)
            if frame is None:
                return
            yield frame

    def _read_message(self) -> Frame | None:
        """Read one whole message; a Frame, or None (counted) when it is malformed.

        Raises zmq.Again when no message arrived within RCVTIMEO. Parts are received
        with ``copy=False``: a ``zmq.Frame`` knows whether more parts follow (asking the
        socket for RCVMORE costs more than receiving a small part), and the big parts
        are then copied exactly once, into the arrays the Frame will own.
        """
        recv = self._socket.recv
        part = recv(0, copy=False)  # the only blocking call: the rest of the message is here
        more = part.more
        try:
            if not more:
                raise _MalformedError("message has 1 part, expected at least 4")
            raw_topic = part.bytes
            part = recv(_NOBLOCK, copy=False)
            more = part.more
            header = parse_header(part, max_atoms=self.max_atoms, max_bytes=self.max_bytes)
            source = self._sources.get(raw_topic)
            if source is None:
                source = self._new_source(raw_topic)
            if not more:
                raise _MalformedError(_missing(3, header))
            part = recv(_NOBLOCK, copy=False)
            more = part.more
            positions = floats_from(part, header, "positions")
            if not more:
                raise _MalformedError(_missing(4, header))
            part = recv(_NOBLOCK, copy=False)
            more = part.more
            n_atoms = header.n_atoms
            raw_numbers = part.bytes
            known = self._numbers.get(source)
            if known is not None and known[0] == raw_numbers and known[1].size == n_atoms:
                numbers = known[1]  # the same as last time: the usual case
            else:
                numbers = numbers_from(part, n_atoms)
                check_numbers(numbers)
                numbers.setflags(write=False)
                self._numbers[source] = (raw_numbers, numbers)
            velocities = forces = None
            index = 5
            if header.flags & FLAG_VELOCITIES:
                if not more:
                    raise _MalformedError(_missing(index, header))
                part = recv(_NOBLOCK, copy=False)
                more = part.more
                velocities = floats_from(part, header, "velocities")
                index += 1
            if header.flags & FLAG_FORCES:
                if not more:
                    raise _MalformedError(_missing(index, header))
                part = recv(_NOBLOCK, copy=False)
                more = part.more
                forces = floats_from(part, header, "forces")
            if more:
                more = False
                extra = self._drain()
                raise _MalformedError(
                    f"message has {header.n_parts + extra} parts, flags "
                    f"0x{header.flags:04x} announce {header.n_parts}"
                )
            if self._filter is not None and not source.startswith(self._filter):
                return None
            frame = make_frame(header, source, positions, numbers, velocities, forces)
        except (ProtocolError, _MalformedError) as exc:
            if more:
                self._drain()
            self._malformed(str(exc))
            return None
        except Exception as exc:  # a bug of ours must not kill the monitor either
            if more:
                self._drain()
            self._malformed(f"{type(exc).__name__}: {exc}")
            return None
        self._count(source, header)
        return frame

    def _drain(self) -> int:
        """Discard the rest of the current message; the number of parts discarded."""
        count = 0
        recv = self._socket.recv
        while True:
            count += 1
            if not recv(_NOBLOCK, copy=False).more:
                return count

    def _new_source(self, raw: bytes) -> str:
        source = decode_topic(raw)
        if len(self._sources) >= self.max_sources:
            # bounded state: a stream of made-up topics cannot grow our dicts
            raise _MalformedError(f"more than {self.max_sources} sources; {source!r} ignored")
        self._sources[raw] = source
        return source

    def _count(self, source: str, header: Header) -> None:
        stats = self.stats
        stats.received += 1
        seq = header.seq
        per = stats.per_source.get(source)
        if per is None:
            # a source seen for the first time: frames before it are not "lost"
            per = stats.per_source[source] = SourceStats(
                received=1, last_seq=seq, stream_id=header.stream_id
            )
            return
        per.received += 1
        last = per.last_seq
        if header.stream_id != per.stream_id or seq <= last:
            # publisher restarted: its new run began at 0, so frames 0..seq-1 are missing
            per.restarts += 1
            stats.restarts += 1
            per.stream_id = header.stream_id
            gap = seq
        else:
            gap = seq - last - 1
        if gap:
            per.lost += gap
            stats.lost += gap
            self._log_loss(source, per)
        per.last_seq = seq

    def _log_loss(self, source: str, per: SourceStats) -> None:
        """A WARNING when frames went missing, at most one line per second."""
        now = time.monotonic()
        if now < self._next_loss_log:
            return
        self._next_loss_log = now + _LOG_INTERVAL
        logger.warning(
            "frames lost on %s: %d of %r so far (%d publisher restarts), %d from all "
            "sources: dropped at the high-water mark when the monitor falls behind, or "
            "sent while it was not connected",
            self.endpoint,
            per.lost,
            source,
            per.restarts,
            self.stats.lost,
        )

    def _malformed(self, reason: str) -> None:
        self.stats.malformed += 1
        self.stats.last_error = reason
        now = time.monotonic()
        if now < self._next_log:
            self._suppressed += 1
            return
        self._next_log = now + _LOG_INTERVAL
        suffix = f" ({self._suppressed} more suppressed)" if self._suppressed else ""
        self._suppressed = 0
        logger.warning("skipped malformed message on %s: %s%s", self.endpoint, reason, suffix)

    # -- lifetime --------------------------------------------------------------------

    def close(self) -> None:
        """Close the socket (LINGER=0) and, if it made its own, the context."""
        self._owned.close()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = "PULL" if self.lossless else "SUB"
        s = self.stats
        return (
            f"Subscriber({self.endpoint!r}, {kind}, received={s.received}, "
            f"malformed={s.malformed}, lost={s.lost}, restarts={s.restarts})"
        )


def _missing(index: int, header: Header) -> str:
    """Part ``index`` (1-based) is missing: the message ended after ``index - 1`` parts."""
    return f"message has {index - 1} parts, flags 0x{header.flags:04x} announce {header.n_parts}"
