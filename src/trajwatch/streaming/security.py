"""CurveZMQ: encryption and authentication for the frame sockets (optional).

One side of a connection is the CURVE *server*: it holds a key pair and accepts only the
clients whose public keys it was given (checked by a ZAP authenticator thread). The other
side is a *client*: it holds its own key pair and knows the server's public key, so it
also knows it talks to the right server. Which side binds does not matter; by default
the publisher (engine or replay) is the server and monitors are clients.

Keys live in ZeroMQ certificate files as written by :func:`keygen` (``trajwatch keygen``):
``NAME.key`` holds the public key (give it to the other side), ``NAME.key_secret`` the
key pair (keep it; it is written with mode 0600).

>>> import tempfile
>>> d = tempfile.mkdtemp()
>>> server_pub, server_sec = keygen(d, "server")
>>> client_pub, client_sec = keygen(d, "monitor")
>>> server = load_server(server_sec, allow=[client_pub])
>>> client = load_client(client_sec, server=server_pub)
>>> client.server == server.public, sorted(server.clients) == [client.public]
(True, True)
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

__all__ = [
    "ZAP_DOMAIN",
    "Curve",
    "CurveClient",
    "CurveServer",
    "Gatekeeper",
    "apply_curve",
    "curve_available",
    "keygen",
    "load_client",
    "load_server",
    "secure_socket",
    "start_gatekeeper",
]

logger = logging.getLogger("trajwatch.security")
ZAP_DOMAIN = "trajwatch"
_LOG_INTERVAL = 1.0


def curve_available() -> bool:
    """True when this libzmq was built with CURVE support (the pyzmq wheels are)."""
    return bool(zmq.has("curve"))


@dataclass(frozen=True)
class CurveServer:
    """The server's key pair and the public keys of the clients it accepts (all Z85)."""

    public: bytes
    secret: bytes
    clients: frozenset[bytes]


@dataclass(frozen=True)
class CurveClient:
    """A client's key pair and the public key of the server it expects (all Z85)."""

    public: bytes
    secret: bytes
    server: bytes


Curve = CurveServer | CurveClient


def keygen(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write a new key pair: ``DIR/NAME.key`` (public) and ``DIR/NAME.key_secret``.

    The directory is created (mode 0700) if needed; the secret file gets mode 0600.
    Refuses to overwrite an existing key. Returns (public path, secret path).
    """
    _need_curve()
    if not name or os.sep in name or name.startswith("."):
        raise ValueError(f"key name must be a plain file name, not {name!r}")
    folder = Path(directory)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    public_key, secret_key = zmq.curve_keypair()
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise FileExistsError(f"{path} exists; remove it first to make a new key")
    # written by hand in ZeroMQ's certificate format (zmq.auth.load_certificate reads it)
    # so the secret file is created 0600 from the start, never briefly world-readable
    _write_certificate(secret, _SECRET_BANNER, public_key, secret_key, mode=0o600)
    _write_certificate(public, _PUBLIC_BANNER, public_key, None, mode=0o644)
    return public, secret


_SECRET_BANNER = (
    "#   ZeroMQ CURVE **Secret** Certificate, made by trajwatch keygen\n"
    "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n"
)
_PUBLIC_BANNER = (
    "#   ZeroMQ CURVE Public Certificate, made by trajwatch keygen\n"
    "#   Give it to the other side of the connection.\n"
)


def _write_certificate(
    path: Path, banner: str, public: bytes, secret: bytes | None, *, mode: int
) -> None:
    lines = [banner, "metadata", "curve", f'    public-key = "{public.decode("ascii")}"']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode("ascii")}"')
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(path, mode)  # O_CREAT's mode is masked by the umask; a public key may be 0644


def load_server(secret_cert: str | Path, allow: Iterable[str | Path]) -> CurveServer:
    """The server side: its ``.key_secret`` file and the clients' public keys.

    ``allow`` lists public certificate files (``*.key``) or directories of them; at least
    one key is required (a server that accepts anyone authenticates nobody).
    """
    public, secret = _load_pair(secret_cert)
    clients: set[bytes] = set()
    for entry in allow:
        path = Path(entry)
        if path.is_dir():
            keys = list(zmq.auth.load_certificates(path))
            if not keys:
                raise ValueError(f"no public keys (*.key) in {path}")
            clients.update(keys)
        else:
            clients.add(_load_public(path))
    if not clients:
        raise ValueError("a CURVE server needs the public key of at least one client")
    return CurveServer(public, secret, frozenset(clients))


def load_client(secret_cert: str | Path, server: str | Path) -> CurveClient:
    """The client side: its ``.key_secret`` file and the server's public ``.key`` file."""
    public, secret = _load_pair(secret_cert)
    return CurveClient(public, secret, _load_public(Path(server)))


def _need_curve() -> None:
    if not curve_available():  # pragma: no cover - the pyzmq wheels have CURVE
        raise RuntimeError("this libzmq has no CURVE support (install pyzmq from its wheels)")


def _load_pair(path: str | Path) -> tuple[bytes, bytes]:
    _need_curve()
    path = Path(path)
    public, secret = _load_certificate(path)
    if secret is None:
        raise ValueError(f"{path} holds no secret key (pass NAME.key_secret, not NAME.key)")
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("secret key %s is readable by others (mode %o)", path, mode & 0o777)
    return public, secret


def _load_public(path: Path) -> bytes:
    public, _ = _load_certificate(path)
    return public


def _load_certificate(path: Path) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise FileNotFoundError(f"no such key file: {path}")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except ValueError as exc:
        raise ValueError(f"{path} is not a ZeroMQ certificate: {exc}") from None
    for key in (public, secret):
        if key is not None and len(key) != 40:
            raise ValueError(f"{path} has a malformed key (expected 40 Z85 characters)")
    return public, secret


def apply_curve(socket: zmq.Socket[Any], curve: Curve) -> None:
    """Set the CURVE options on a socket, before it binds or connects."""
    _need_curve()
    if isinstance(curve, CurveServer):
        socket.setsockopt(zmq.CURVE_SERVER, 1)
        socket.setsockopt(zmq.CURVE_SECRETKEY, curve.secret)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, curve.public)
        socket.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
    else:
        socket.setsockopt(zmq.CURVE_SERVERKEY, curve.server)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, curve.public)
        socket.setsockopt(zmq.CURVE_SECRETKEY, curve.secret)


class Gatekeeper:
    """The allow-list a ZAP authenticator asks about each connecting client.

    ``denied`` counts rejected handshakes; each is logged at WARNING (at most one line
    per second) on the ``trajwatch.security`` logger.
    """

    def __init__(self, clients: frozenset[bytes]) -> None:
        self.clients = clients
        self.accepted = 0
        self.denied = 0
        self._lock = threading.Lock()
        self._next_log = 0.0

    def callback(self, domain: str, key: bytes) -> bool:
        ok = key in self.clients
        with self._lock:
            if ok:
                self.accepted += 1
                return True
            self.denied += 1
            now = time.monotonic()
            if now >= self._next_log:
                self._next_log = now + _LOG_INTERVAL
                logger.warning(
                    "refused a CURVE client with an unknown public key %s (%d refused so far)",
                    key.decode("ascii", "replace"),
                    self.denied,
                )
        return False


def start_gatekeeper(
    context: zmq.Context[Any], server: CurveServer
) -> tuple[ThreadAuthenticator, Gatekeeper]:
    """Start the ZAP authenticator thread of ``context`` (one per context) for ``server``.

    Stop it (``authenticator.stop()``) before terminating the context.
    """
    gatekeeper = Gatekeeper(server.clients)
    authenticator = ThreadAuthenticator(context, log=logging.getLogger("trajwatch.security.zap"))
    authenticator.start()
    authenticator.configure_curve_callback(ZAP_DOMAIN, credentials_provider=gatekeeper)
    return authenticator, gatekeeper


def secure_socket(
    socket: zmq.Socket[Any], context: zmq.Context[Any], curve: Curve, *, own_context: bool
) -> tuple[ThreadAuthenticator | None, Gatekeeper | None]:
    """Make ``socket`` a CURVE server or client; a server also gets its authenticator.

    A server needs a context of its own: the ZAP handler is one per context.
    """
    if isinstance(curve, CurveServer):
        if not own_context:
            raise ValueError("a CURVE server needs its own context (one ZAP handler per context)")
        authenticator, gatekeeper = start_gatekeeper(context, curve)
        try:
            apply_curve(socket, curve)
        except BaseException:
            authenticator.stop()
            raise
        return authenticator, gatekeeper
    apply_curve(socket, curve)
    return None, None
