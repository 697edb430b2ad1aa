"""Fan-in for many engines: ZeroMQ's own XSUB/XPUB proxy device, on a thread.

Engines connect their publishers to the **frontend** (an XSUB socket,
``Publisher(endpoint, bind=False)`` or ``trajwatch replay --connect``); monitors connect
their subscribers to the **backend** (an XPUB socket). ``zmq.proxy_steerable`` forwards
frames from the frontend to the backend untouched, and subscriptions the other way, so
a publisher's :meth:`~trajwatch.streaming.Publisher.wait_for_subscriber` sees a monitor
behind the proxy and only the monitors whose topic prefixes match a source get its
frames (the filtering happens in the publishers). Sequence numbers travel inside the
frames, so each monitor counts the frames lost anywhere on the way, per source.

>>> import numpy as np
>>> from trajwatch.frame import Frame
>>> from trajwatch.streaming import Publisher, Subscriber
>>> with Proxy("tcp://127.0.0.1:*", "tcp://127.0.0.1:*") as proxy, \\
...         Subscriber(proxy.backend, topics=("md",)) as monitor, \\
...         Publisher(proxy.frontend, bind=False, topic="md1") as engine:
...     engine.wait_for_subscriber(timeout=5.0)  # the subscription came through the proxy
...     engine.send(Frame(np.zeros((1, 3)), [29]))
...     frame = monitor.recv(timeout=5.0)
...     frame.source, proxy.stats().parts_out >= 4
True
True
('md1', True)
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import struct
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import zmq

from trajwatch.streaming.protocol import check_bind_endpoint
from trajwatch.streaming.security import CurveServer, Gatekeeper, apply_curve, start_gatekeeper

__all__ = ["DEFAULT_BACKEND", "DEFAULT_FRONTEND", "Proxy", "ProxyStats"]

DEFAULT_FRONTEND = "tcp://127.0.0.1:5554"
"""Where engines connect (XSUB)."""
DEFAULT_BACKEND = "tcp://127.0.0.1:5555"
"""Where monitors connect (XPUB): the monitor's default endpoint."""

_ids = itertools.count()


@dataclass(frozen=True)
class ProxyStats:
    """libzmq's counters of a running proxy. They count message *parts* (a frame is 4 to
    6 parts) and bytes: frames flow from the engines to the monitors, subscriptions back.
    A frame sent on to several monitors counts once; one that a full monitor queue
    dropped counts as sent (that monitor sees the gap in its sequence numbers)."""

    parts_in: int
    """Parts received from the engines."""
    bytes_in: int
    parts_out: int
    """Parts sent on to the monitors."""
    bytes_out: int
    subscriptions_in: int
    """(Un)subscription messages received from the monitors."""
    subscriptions_out: int
    """(Un)subscription messages passed on to the engines."""

    def line(self) -> str:
        return (
            f"{self.parts_out:,} parts ({self.bytes_out / 1e6:,.1f} MB) forwarded, "
            f"{self.subscriptions_in:,} (un)subscriptions"
        )


class Proxy:
    """The XSUB (``frontend``) -> XPUB (``backend``) proxy, running on a thread.

    Both sockets are bound when the object is made, so address errors surface at once;
    ``frontend``/``backend`` then hold the resolved endpoints (port ``*`` picks a free
    one). :meth:`start` forwards on a background thread until :meth:`close`. Binding a
    non-loopback address needs ``allow_remote=True``, as for Publisher and Subscriber.
    ``hwm`` is each queue's length in messages: a monitor that falls that far behind
    loses frames (counted as sequence gaps by that monitor only; the others and the
    engines do not wait for it). ``curve`` (a
    :class:`~trajwatch.streaming.security.CurveServer`) makes the proxy the CURVE server
    of both sockets: engines and monitors connect as clients whose public keys it allows
    (``gatekeeper`` counts the handshakes); it needs the proxy's own context.
    """

    def __init__(
        self,
        frontend: str = DEFAULT_FRONTEND,
        backend: str = DEFAULT_BACKEND,
        *,
        hwm: int = 1000,
        allow_remote: bool = False,
        curve: CurveServer | None = None,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        check_bind_endpoint(frontend, allow_remote)
        check_bind_endpoint(backend, allow_remote)
        if hwm < 0:
            raise ValueError(f"hwm must be >= 0, not {hwm}")
        if curve is not None and context is not None:
            raise ValueError("a CURVE server needs its own context (one ZAP handler per context)")
        self._own_context = context is None
        ctx: zmq.Context[Any] = zmq.Context() if context is None else context
        self._context = ctx
        self._sockets: list[zmq.Socket[Any]] = []
        self._thread: threading.Thread | None = None
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._authenticator: Any = None
        #: the allow-list's counts of accepted and refused clients (with ``curve``)
        self.gatekeeper: Gatekeeper | None = None
        try:
            self._xsub = self._socket(zmq.XSUB, hwm)
            self._xpub = self._socket(zmq.XPUB, hwm)
            if curve is not None:
                self._authenticator, self.gatekeeper = start_gatekeeper(ctx, curve)
                apply_curve(self._xsub, curve)
                apply_curve(self._xpub, curve)
            control = f"inproc://trajwatch-proxy-{id(self)}-{next(_ids)}"
            # REP: the proxy answers STATISTICS (and every other command) on it
            self._control = self._socket(zmq.REP, hwm)
            self._control.bind(control)
            self._request = self._socket(zmq.REQ, hwm)
            self._request.connect(control)
            self._request.setsockopt(zmq.RCVTIMEO, 5000)
            # a request whose reply was never read (Ctrl-C in between) must not block the next
            self._request.setsockopt(zmq.REQ_RELAXED, 1)
            self._request.setsockopt(zmq.REQ_CORRELATE, 1)
            self._xsub.bind(frontend)
            self._xpub.bind(backend)
        except BaseException:
            self._close_sockets()
            raise
        #: resolved endpoints: engines connect to ``frontend``, monitors to ``backend``
        self.frontend = _last_endpoint(self._xsub, frontend)
        self.backend = _last_endpoint(self._xpub, backend)

    def _socket(self, kind: int, hwm: int) -> zmq.Socket[Any]:
        socket: zmq.Socket[Any] = self._context.socket(kind)
        self._sockets.append(socket)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.SNDHWM, hwm)
        socket.setsockopt(zmq.RCVHWM, hwm)
        return socket

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._done.is_set()

    def start(self) -> Proxy:
        """Forward on a background thread; returns self."""
        if self._thread is not None:
            raise RuntimeError("the proxy has already been started")
        self._thread = threading.Thread(target=self._run, name="trajwatch-proxy", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        # Signals are the main thread's business: one delivered to this thread would
        # interrupt libzmq's poll and end the proxy.
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            zmq.proxy_steerable(self._xsub, self._xpub, None, self._control)
        except BaseException as error:  # reported by stats() and close()
            self._error = error
        finally:
            self._done.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the forwarding to end; True if it has (or never started)."""
        # an Event, not Thread.join: a KeyboardInterrupt inside Thread.join can leave the
        # thread marked as stopped while it still runs (CPython 3.11)
        return self._thread is None or self._done.wait(timeout)

    def _command(self, command: bytes) -> list[bytes]:
        self._request.send(command)
        reply: list[bytes] = self._request.recv_multipart()
        return reply

    def stats(self) -> ProxyStats:
        """The counters so far (asks the running proxy; call from the owner's thread)."""
        if not self.running:
            error = self._error
            raise RuntimeError("the proxy is not running") from error
        # frontend in, out; backend in, out: (messages, bytes) each
        v = [struct.unpack("<Q", part)[0] for part in self._command(b"STATISTICS")]
        return ProxyStats(v[0], v[1], v[6], v[7], v[4], v[2])

    def close(self) -> None:
        """Stop forwarding and close the sockets (LINGER=0); frames in flight are lost."""
        if self.running:
            with contextlib.suppress(zmq.ZMQError):  # it may have ended on its own
                self._command(b"TERMINATE")
            self.join(5.0)
        self._close_sockets()

    def _close_sockets(self) -> None:
        for socket in self._sockets:
            if not socket.closed:
                socket.close(linger=0)
        if self._authenticator is not None:
            self._authenticator.stop()  # before term(): its sockets would block it
            self._authenticator = None
        if self._own_context and not self._context.closed:
            self._context.term()

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"Proxy(frontend={self.frontend!r}, backend={self.backend!r}, {state})"


def _last_endpoint(socket: zmq.Socket[Any], fallback: str) -> str:
    last = socket.getsockopt(zmq.LAST_ENDPOINT)
    return last.decode() if isinstance(last, bytes) and last else fallback
