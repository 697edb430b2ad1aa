"""One ZeroMQ socket with what it owns: its context (when made for it) and its CurveZMQ
authenticator. Opening is one step that leaves nothing behind when it fails; closing
stops things in the order libzmq needs. Shared by :class:`~trajwatch.streaming.Publisher`
and :class:`~trajwatch.streaming.Subscriber`.

>>> import zmq
>>> owned = OwnedSocket(zmq.PULL, "tcp://127.0.0.1:*", bind=True)
>>> owned.endpoint.startswith("tcp://127.0.0.1:"), owned.gatekeeper is None
(True, True)
>>> owned.close()
>>> owned.socket.closed
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from trajwatch.streaming.security import Curve, Gatekeeper, secure_socket

__all__ = ["OwnedSocket"]


class OwnedSocket:
    """A socket of ``kind``, set up by ``configure``, secured with ``curve``, then bound to
    or connected to ``endpoint``; ``endpoint`` afterwards is the address actually in use
    (a wildcard port resolved). Without ``context`` it makes one of its own, so that
    ``close(linger)`` can wait for queued messages (terminating the context is what honours
    the linger period) and so that a CURVE server gets its own ZAP handler.
    """

    def __init__(
        self,
        kind: int,
        endpoint: str,
        *,
        bind: bool,
        context: zmq.Context[Any] | None = None,
        curve: Curve | None = None,
        configure: Callable[[zmq.Socket[Any]], None] | None = None,
    ) -> None:
        self._own_context = context is None
        self._authenticator: ThreadAuthenticator | None = None
        #: a CURVE server's allow-list, with counts of accepted and refused clients
        self.gatekeeper: Gatekeeper | None = None
        self.context: zmq.Context[Any] = zmq.Context() if context is None else context
        try:
            socket = self.context.socket(kind)
        except BaseException:
            if self._own_context:
                self.context.term()
            raise
        try:
            socket.setsockopt(zmq.LINGER, 0)
            if configure is not None:
                configure(socket)
            if curve is not None:
                self._authenticator, self.gatekeeper = secure_socket(
                    socket, self.context, curve, own_context=self._own_context
                )
            if bind:
                socket.bind(endpoint)
            else:
                socket.connect(endpoint)
        except BaseException:
            socket.close(linger=0)
            if self._authenticator is not None:
                self._authenticator.stop()
            if self._own_context:
                self.context.term()
            raise
        self.socket: zmq.Socket[Any] = socket
        last = socket.getsockopt(zmq.LAST_ENDPOINT)
        self.endpoint = last.decode() if isinstance(last, bytes) and last else endpoint

    def close(self, linger: float = 0.0) -> None:
        """Close the socket, granting ``linger`` seconds to queued messages (with the
        socket's own context, this waits for them), then the authenticator and context."""
        if not self.socket.closed:
            self.socket.close(linger=max(0, int(linger * 1000)))
        if self._authenticator is not None:
            self._authenticator.stop()  # before term(): its sockets would block it
            self._authenticator = None
        if self._own_context and not self.context.closed:
            self.context.term()
