"""The engine side of the socket: :class:`Publisher` sends frames as protocol v1 messages.

The default mode never blocks the engine: an XPUB socket sends with ``NOBLOCK`` and
``XPUB_NODROP``, so a full high-water mark makes :meth:`Publisher.send` return False (the
frame is dropped and counted) instead of stalling the MD step. ``lossless=True`` uses
PUSH with blocking sends, for archives where nothing may be lost.

>>> import numpy as np
>>> from trajwatch.frame import Frame
>>> with Publisher("tcp://127.0.0.1:*", topic="demo") as pub:
...     pub.wait_for_subscriber(timeout=0.01)  # nobody listening
...     pub.send(Frame(np.zeros((1, 3)), [1])), pub.sent, pub.dropped
False
(True, 1, 0)
"""

from __future__ import annotations

import os
import time
from types import TracebackType
from typing import Any

import numpy as np
import zmq
from numpy.typing import DTypeLike

from trajwatch.frame import Frame
from trajwatch.streaming.protocol import check_bind_endpoint, encode
from trajwatch.streaming.security import Curve, Gatekeeper
from trajwatch.streaming.sockets import OwnedSocket

__all__ = ["Publisher"]

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
_SNDMORE = int(zmq.SNDMORE)
_ZERO_COPY_BYTES = 1 << 16  # pyzmq's default copy_threshold
_time_ns = time.time_ns


class Publisher:
    """Send :class:`~trajwatch.frame.Frame` objects over ZeroMQ (wire protocol v1).

    ``topic`` names the stream; the empty default sends each frame under its own
    ``frame.source``. Sequence numbers count every frame offered per topic, dropped ones
    included, so subscribers see the gaps. ``stream_id`` (random by default) changes with
    every Publisher, so a subscriber tells a restart from a gap. ``hwm`` is the queue
    length in frames (0: unbounded). ``send_timeout`` (lossless mode only) bounds how long
    a send waits for a stuck consumer; the frame then counts as dropped. Binding a
    non-loopback address needs ``allow_remote=True``. ``curve`` (a
    :class:`~trajwatch.streaming.security.CurveServer` or ``CurveClient``) encrypts and
    authenticates the connection (``docs/security.md``). Not thread-safe: one thread sends.
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        bind: bool = True,
        topic: str = "",
        hwm: int = 1000,
        lossless: bool = False,
        dtype: DTypeLike = np.float64,
        context: zmq.Context[Any] | None = None,
        allow_remote: bool = False,
        stream_id: int | None = None,
        send_timeout: float | None = None,
        curve: Curve | None = None,
    ) -> None:
        if bind:
            check_bind_endpoint(endpoint, allow_remote)
        self._dtype = np.dtype(dtype)
        if self._dtype not in (np.dtype(np.float64), np.dtype(np.float32)):
            raise ValueError(f"dtype must be float64 or float32, not {self._dtype}")
        if hwm < 0:
            raise ValueError(f"hwm must be >= 0, not {hwm}")
        self.topic = topic
        self.lossless = lossless
        self.stream_id = (
            (int.from_bytes(os.urandom(4), "little") or 1) if stream_id is None else stream_id
        )
        if not 0 <= self.stream_id < 1 << 32:
            raise ValueError(f"stream_id must fit in 32 bits, not {stream_id}")
        self.sent = 0
        self.dropped = 0
        self._seqs: dict[str, int] = {}
        self._subscriptions: set[bytes] = set()
        # lossless: queue only to completed connections, so POLLOUT means "a peer is there";
        # otherwise EAGAIN instead of a silent drop at the HWM, so drops can be counted
        self._flags = 0 if lossless else int(zmq.NOBLOCK)

        def configure(socket: zmq.Socket[Any]) -> None:
            socket.setsockopt(zmq.SNDHWM, hwm)
            if lossless:
                socket.setsockopt(zmq.IMMEDIATE, 1)
                if send_timeout is not None:
                    socket.setsockopt(zmq.SNDTIMEO, max(0, round(send_timeout * 1000)))
            else:
                socket.setsockopt(zmq.XPUB_NODROP, 1)

        self._owned = OwnedSocket(
            zmq.PUSH if lossless else zmq.XPUB,
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

    def send(self, frame: Frame) -> bool:
        """Offer one frame; True if queued, False if dropped at the high-water mark.

        Never blocks in the default mode; with ``lossless=True`` it blocks until the
        frame is queued. ``sent`` counts frames handed to ZeroMQ: with no subscriber at
        all, PUB semantics discard them, and they still count as sent (see
        :meth:`wait_for_subscriber`). The frame's arrays may be sent without a copy: do not change
        them in place afterwards (a Frame normally owns fresh arrays, so this holds).

        The header's ``sent_ns`` is the wall clock now, or the frame's own ``wall_time``
        when it has one (a frame passed on from another socket keeps its origin's stamp),
        so a receiver measures latency from where the frame was first sent.
        """
        topic = self.topic or frame.source
        seq = self._seqs.get(topic, 0)
        self._seqs[topic] = seq + 1
        parts = encode(
            frame,
            topic=topic,
            dtype=self._dtype,
            seq=seq,
            stream_id=self.stream_id,
            sent_ns=_time_ns() if frame.wall_time is None else None,
        )
        # Part by part with plain-int flags: send_multipart's enum arithmetic and checks
        # cost more than the sends of a small frame. Arrays of 64 kB and more go out
        # zero-copy; smaller parts are copied (cheaper than tracking a shared buffer).
        send = self._socket.send
        flags = self._flags
        more = flags | _SNDMORE
        copy = parts[2].nbytes < _ZERO_COPY_BYTES
        try:
            send(parts[0], more)  # the only send that can raise Again: a message is atomic
        except zmq.Again:
            self.dropped += 1
            return False
        send(parts[1], more)
        last = len(parts) - 1
        for i in range(2, last):
            send(parts[i], more, copy=copy)
        send(parts[last], flags, copy=copy)
        self.sent += 1
        if not self.sent & 1023 and not self.lossless:
            self._drain_subscriptions()  # keep the XPUB's inbox of (un)subscriptions short
        return True

    def next_seq(self, topic: str | None = None) -> int:
        """The sequence number the next frame on ``topic`` (default: this topic) gets."""
        return self._seqs.get(self.topic if topic is None else topic, 0)

    def wait_for_subscriber(self, timeout: float | None = None) -> bool:
        """Wait until a subscriber that receives this publisher's frames has joined.

        PUB/SUB: the XPUB socket sees the subscription message, after which frames reach
        that subscriber (no slow-joiner loss). With a fixed ``topic`` the subscription
        must match it; with per-frame topics any subscription counts. PUSH: wait until a
        peer is connected. Returns False on timeout (``None`` waits forever).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._has_subscriber():
                return True
            remaining = -1 if deadline is None else deadline - time.monotonic()
            if deadline is not None and remaining <= 0:
                return False
            ms = -1 if deadline is None else max(1, int(remaining * 1000))
            if self.lossless:
                return bool(self._socket.poll(ms, zmq.POLLOUT))
            if self._socket.poll(ms, zmq.POLLIN):
                self._drain_subscriptions()

    def _has_subscriber(self) -> bool:
        if self.lossless:
            return bool(self._socket.poll(0, zmq.POLLOUT))
        self._drain_subscriptions()
        topic = self.topic.encode("utf-8")
        if not self.topic:
            return bool(self._subscriptions)
        return any(topic.startswith(prefix) for prefix in self._subscriptions)

    def _drain_subscriptions(self) -> None:
        """Read pending (un)subscription messages from the XPUB socket."""
        while True:
            try:
                message = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if message[:1] == b"\x01":
                self._subscriptions.add(message[1:])
            elif message[:1] == b"\x00":
                self._subscriptions.discard(message[1:])

    def close(self, linger: float = 0.0) -> None:
        """Close the socket. ``linger`` seconds are granted to deliver queued frames.

        The default (LINGER=0) discards frames still queued and returns at once. A
        lossless replay that must deliver its tail calls ``close(linger=10.0)``: with the
        Publisher's own context, close then blocks until the queue is delivered or the
        time is up.
        """
        self._owned.close(linger)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = "PUSH" if self.lossless else "XPUB"
        return (
            f"Publisher({self.endpoint!r}, {kind}, topic={self.topic!r}, "
            f"sent={self.sent}, dropped={self.dropped})"
        )
