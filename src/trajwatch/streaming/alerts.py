"""The merged event stream: one SUB socket connected to the alert sockets of several monitors.

Each ``trajwatch monitor --alerts ENDPOINT`` re-publishes its events as
``[b"<kind>/<source>", event JSON]`` (:class:`~trajwatch.sinks.AlertPublisher`). A SUB
socket connected to several such endpoints receives from all of them, fair-queued: that
is the whole merge, done by ZeroMQ. :class:`AlertSubscriber` turns the messages back into
:class:`~trajwatch.events.Event` objects; a message that is not a valid event is counted
and skipped, never raised. ``trajwatch events EP1 EP2 ...`` prints the merged stream.

>>> from trajwatch.events import Event
>>> from trajwatch.sinks import AlertPublisher
>>> one, two = AlertPublisher("tcp://127.0.0.1:*"), AlertPublisher("tcp://127.0.0.1:*")
>>> events = AlertSubscriber([one.endpoint, two.endpoint], topics=("anomaly/",))
>>> def alarm(source: str) -> Event:
...     return Event("anomaly", 7, 70, 14.0, source, "zscore", 41.0, 8.0, "critical")
>>> got = set()
>>> while len(got) < 2:  # PUB drops what is sent before the subscription arrives
...     one.emit(alarm("a1")); two.emit(alarm("b1"))
...     event = events.recv(timeout=0.1)
...     if event is not None:
...         got.add(event.source)
>>> sorted(got)
['a1', 'b1']
>>> events.close(); one.close(); two.close()
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import zmq

from trajwatch.events import Event

__all__ = ["AlertSubscriber"]

logger = logging.getLogger("trajwatch.streaming")

MAX_ALERT_BYTES = 1 << 20
"""An event is a few hundred bytes; a peer that sends a larger part is dropped by libzmq."""


class AlertSubscriber:
    """Receive events from one or more alert sockets (``monitor --alerts``), merged.

    ``topics`` are prefixes of ``"<kind>/<source>"``: ``"anomaly"`` for every anomaly,
    ``"anomaly/md1"`` for one source's, ``""`` (the default) for everything. PUB/SUB
    semantics: events sent before the connection is made are not received.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        topics: Sequence[str] = ("",),
        hwm: int = 10_000,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        if isinstance(endpoints, str) or isinstance(topics, str):
            raise TypeError("endpoints and topics must be sequences of str")
        if not endpoints:
            raise ValueError("no alert endpoint to connect to")
        self.received = 0
        self.malformed = 0
        self.last_error = ""
        self._next_log = 0.0
        self._own_context = context is None
        self._context: zmq.Context[Any] = zmq.Context() if context is None else context
        socket = self._context.socket(zmq.SUB)
        try:
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.RCVHWM, hwm)
            socket.setsockopt(zmq.MAXMSGSIZE, MAX_ALERT_BYTES)
            for topic in topics:
                socket.setsockopt(zmq.SUBSCRIBE, topic.encode("utf-8"))
            # watched from before the first connect, so no handshake goes unseen
            self._monitor: zmq.Socket[Any] | None = socket.get_monitor_socket(
                zmq.EVENT_HANDSHAKE_SUCCEEDED
            )
            self._connected: set[str] = set()
            for endpoint in endpoints:
                socket.connect(endpoint)
        except BaseException:
            if getattr(self, "_monitor", None) is not None:
                socket.disable_monitor()
                self._monitor.close(linger=0)  # type: ignore[union-attr]
            socket.close(linger=0)
            if self._own_context:
                self._context.term()
            raise
        self._socket: zmq.Socket[Any] = socket
        self.endpoints = tuple(endpoints)

    def wait_connected(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds until every endpoint has completed its handshake
        (the subscriptions travel right behind it); the number that have. Endpoints not
        up yet keep being retried in the background, as ZeroMQ always does."""
        from zmq.utils.monitor import recv_monitor_message

        deadline = time.monotonic() + timeout
        monitor = self._monitor
        while monitor is not None and len(self._connected) < len(self.endpoints):
            left = deadline - time.monotonic()
            if left <= 0 or not monitor.poll(max(1, math.ceil(left * 1e3))):
                break
            self._connected.add(str(recv_monitor_message(monitor).get("endpoint", b"")))
        if len(self._connected) >= len(self.endpoints):
            self._stop_monitor()
        return min(len(self._connected), len(self.endpoints))

    def _stop_monitor(self) -> None:
        if self._monitor is not None:
            self._socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None

    def recv(self, timeout: float | None = None) -> Event | None:
        """The next valid event, or None if none arrived within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            ms = -1 if deadline is None else max(0, math.ceil((deadline - time.monotonic()) * 1e3))
            if not self._socket.poll(ms, zmq.POLLIN):
                return None
            event = self._read()
            if event is not None:
                return event
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _read(self) -> Event | None:
        parts = self._socket.recv_multipart(zmq.NOBLOCK)
        try:
            if len(parts) != 2:
                raise ValueError(f"alert has {len(parts)} parts, expected 2")
            data = json.loads(parts[1])
            if not isinstance(data, dict):
                raise ValueError("alert body is not a JSON object")
            event = Event.from_dict(data)
        except Exception as error:  # untrusted input: any failure means "malformed"
            self.malformed += 1
            self.last_error = f"{type(error).__name__}: {error}"
            now = time.monotonic()
            if now >= self._next_log:  # at most one line a second
                self._next_log = now + 1.0
                logger.warning("skipped malformed alert: %s", self.last_error)
            return None
        self.received += 1
        return event

    def close(self) -> None:
        if not self._socket.closed:
            self._stop_monitor()
            self._socket.close(linger=0)
        if self._own_context and not self._context.closed:
            self._context.term()

    def __enter__(self) -> AlertSubscriber:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
