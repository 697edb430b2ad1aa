"""CurveZMQ, loopback-only binds and key files, over real sockets on 127.0.0.1.

Every receive has a timeout and every socket LINGER=0, so a failing test fails fast.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from trajwatch.cli import main
from trajwatch.frame import Frame
from trajwatch.streaming import Publisher, Subscriber
from trajwatch.streaming.security import (
    CurveClient,
    CurveServer,
    curve_available,
    keygen,
    load_client,
    load_server,
)

pytestmark = pytest.mark.skipif(not curve_available(), reason="libzmq without CURVE")

LOCAL = "tcp://127.0.0.1:*"
TIMEOUT = 5.0


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Key pairs: the server, an authorised monitor, an intruder."""
    folder = tmp_path_factory.mktemp("keys")
    return {name: keygen(folder, name) for name in ("server", "monitor", "intruder")}


@pytest.fixture
def server(keys: dict[str, tuple[Path, Path]]) -> CurveServer:
    return load_server(keys["server"][1], allow=[keys["monitor"][0]])


def client(keys: dict[str, tuple[Path, Path]], name: str, server: str = "server") -> CurveClient:
    return load_client(keys[name][1], server=keys[server][0])


def frame(step: int) -> Frame:
    return Frame(np.full((3, 3), float(step)), [8, 1, 1], step=step)


def send_until_received(pub: Publisher, sub: Subscriber, *, seconds: float = TIMEOUT) -> int:
    """Send frames until ``sub`` gets one; the number received (0 after ``seconds``)."""
    deadline = time.monotonic() + seconds
    step = 0
    while time.monotonic() < deadline:
        pub.send(frame(step))
        step += 1
        if sub.recv(timeout=0.05) is not None:
            return 1
    return 0


# -- key files -----------------------------------------------------------------------


def test_keygen_writes_a_private_secret_and_a_public_key(tmp_path: Path) -> None:
    public, secret = keygen(tmp_path / "k", "engine")
    assert (public.name, secret.name) == ("engine.key", "engine.key_secret")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o700
    assert "secret-key" not in public.read_text()
    pair = load_client(secret, server=public)
    assert len(pair.public) == len(pair.secret) == 40 and pair.public != pair.secret
    assert zmq.curve_public(pair.secret) == pair.public


def test_keygen_never_overwrites_a_key(tmp_path: Path) -> None:
    public, _ = keygen(tmp_path, "a")
    before = public.read_text()
    with pytest.raises(FileExistsError):
        keygen(tmp_path, "a")
    assert public.read_text() == before
    with pytest.raises(ValueError, match="plain file name"):
        keygen(tmp_path, "../b")


def test_key_loading_errors_are_clear(
    keys: dict[str, tuple[Path, Path]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server_public, server_secret = keys["server"]
    with pytest.raises(ValueError, match="no secret key"):
        load_server(server_public, allow=[keys["monitor"][0]])
    with pytest.raises(ValueError, match="at least one client"):
        load_server(server_secret, allow=[])
    with pytest.raises(FileNotFoundError):
        load_client(tmp_path / "missing.key_secret", server=server_public)
    garbage = tmp_path / "garbage.key"
    garbage.write_text('curve\n    public-key = "short"\n')
    with pytest.raises(ValueError, match="malformed key"):
        load_client(server_secret, server=garbage)
    empty_dir = tmp_path / "none"
    empty_dir.mkdir()
    with pytest.raises(ValueError, match="no public keys"):
        load_server(server_secret, allow=[empty_dir])
    # a directory of public keys allows all of them
    both = load_server(server_secret, allow=[server_public.parent])
    assert len(both.clients) == 3
    # a secret key readable by others still loads, with a warning
    loose = tmp_path / "loose.key_secret"
    loose.write_bytes(server_secret.read_bytes())
    loose.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="trajwatch.security"):
        load_client(loose, server=server_public)
    assert "readable by others" in caplog.text


# -- CurveZMQ on the wire ------------------------------------------------------------


def test_only_the_authorised_client_receives_frames(
    keys: dict[str, tuple[Path, Path]], server: CurveServer, caplog: pytest.LogCaptureFixture
) -> None:
    with Publisher(LOCAL, topic="md", curve=server) as pub:
        endpoint = pub.endpoint
        good = Subscriber(endpoint, curve=client(keys, "monitor"))
        intruder = Subscriber(endpoint, curve=client(keys, "intruder"))
        plain = Subscriber(endpoint)
        # the right client key, but it expects another server: it must not talk to this one
        misled = Subscriber(endpoint, curve=client(keys, "monitor", server="intruder"))
        try:
            with caplog.at_level(logging.WARNING, logger="trajwatch.security"):
                assert pub.wait_for_subscriber(TIMEOUT)
                assert send_until_received(pub, good) == 1
                got = [good.recv(timeout=TIMEOUT) for _ in range(3) if pub.send(frame(99))]
                assert all(f is not None and f.step == 99 for f in got)
                # the others had all this time to join; give them one more second of frames
                deadline = time.monotonic() + 1.0
                while time.monotonic() < deadline:
                    pub.send(frame(7))
                    for sub in (intruder, plain, misled):
                        assert sub.recv(timeout=0.02) is None
            assert all(s.stats.received == 0 for s in (intruder, plain, misled))
            assert pub.gatekeeper is not None
            assert pub.gatekeeper.accepted >= 1 and pub.gatekeeper.denied >= 1
            assert "refused a CURVE client" in caplog.text
        finally:
            for sub in (good, intruder, plain, misled):
                sub.close()


def test_curve_works_for_fan_in_and_lossless(keys: dict[str, tuple[Path, Path]]) -> None:
    # flipped roles: the monitor binds and is the CURVE server, the engine connects
    server = load_server(keys["server"][1], allow=[keys["monitor"][0]])
    with Subscriber(LOCAL, bind=True, lossless=True, curve=server) as sub:
        engine = client(keys, "monitor")  # the authorised key, used by the engine here
        with Publisher(sub.endpoint, bind=False, lossless=True, curve=engine,
                       send_timeout=TIMEOUT) as pub:  # fmt: skip
            for step in range(5):
                assert pub.send(frame(step))
            steps = []
            for _ in range(5):
                got = sub.recv(timeout=TIMEOUT)
                assert got is not None
                steps.append(got.step)
        assert steps == list(range(5))
        assert sub.gatekeeper is not None and sub.gatekeeper.accepted == 1


def test_a_curve_server_needs_its_own_context(server: CurveServer) -> None:
    context: zmq.Context[Any] = zmq.Context()
    try:
        with pytest.raises(ValueError, match="own context"):
            Publisher(LOCAL, curve=server, context=context)
    finally:
        context.term()


def test_closing_a_curve_server_stops_its_authenticator(server: CurveServer) -> None:
    import threading

    before = threading.active_count()
    for _ in range(3):
        Publisher(LOCAL, curve=server).close()
        Subscriber(LOCAL, bind=True, curve=server).close()
    assert threading.active_count() == before


# -- binds beyond loopback -----------------------------------------------------------


@pytest.mark.parametrize("command", ["monitor --bind", "replay {file}"])
def test_cli_refuses_a_non_loopback_bind_without_allow_remote(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "x.xyz").write_text("1\n\nH 0 0 0\n")
    argv = command.format(file=tmp_path / "x.xyz").split()
    assert main([*argv, "--endpoint", "tcp://0.0.0.0:0"]) == 1
    assert "refusing to bind" in capsys.readouterr().err


def test_cli_curve_options_are_checked(
    keys: dict[str, tuple[Path, Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    secret = str(keys["server"][1])
    for bad, message in [
        (["--curve-server-key", secret], "needs --curve-allow"),
        (["--curve-client-key", secret], "needs --curve-server"),
        (["--curve-allow", secret], "needs --curve-server-key"),
        (["--curve-server-key", secret, "--curve-client-key", secret], "exclude each other"),
    ]:
        assert main(["monitor", "--max-frames", "1", *bad]) == 1
        assert message in capsys.readouterr().err


def test_cli_warns_when_listening_remotely_in_clear(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: the bind fails after the warning,
    # so the test never listens beyond loopback (and the failure is a clear error)
    with caplog.at_level(logging.WARNING, logger="trajwatch"):
        code = main(["monitor", "--bind", "--allow-remote", "--endpoint", "tcp://192.0.2.1:0"])
    assert code == 1
    assert "without CurveZMQ" in caplog.text
    assert "trajwatch: error: Cannot assign requested address" in capsys.readouterr().err


def test_cli_keygen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", str(tmp_path / "keys")]) == 0
    names = sorted(p.name for p in (tmp_path / "keys").iterdir())
    assert names == ["client.key", "client.key_secret", "server.key", "server.key_secret"]
    assert main(["keygen", str(tmp_path / "keys"), "monitor2"]) == 0
    assert (tmp_path / "keys" / "monitor2.key").is_file()
    assert main(["keygen", str(tmp_path / "keys"), "server"]) == 1  # never overwrites
    assert "exists" in capsys.readouterr().err


@pytest.fixture
def monitor_process() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.communicate()


@pytest.mark.slow
def test_cli_replay_to_monitor_over_curve(
    clean_file: Path,
    free_endpoint: str,
    tmp_path: Path,
    monitor_process: list[subprocess.Popen[str]],
) -> None:
    keydir = tmp_path / "keys"
    assert main(["keygen", str(keydir)]) == 0
    events = tmp_path / "events.jsonl"
    monitor = subprocess.Popen(
        [sys.executable, "-m", "trajwatch", "monitor", "--no-tui", "--endpoint", free_endpoint,
         "--events", str(events), "--idle-timeout", "2", "--lossless", "--bind",
         "--curve-server-key", str(keydir / "server.key_secret"),
         "--curve-allow", str(keydir / "client.key")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    monitor_process.append(monitor)
    code = main(["replay", str(clean_file), "--endpoint", free_endpoint, "--max", "--lossless",
                 "--connect", "--wait", "30",
                 "--curve-client-key", str(keydir / "client.key_secret"),
                 "--curve-server", str(keydir / "server.key")])  # fmt: skip
    assert code == 0
    _, stderr = monitor.communicate(timeout=60)
    assert monitor.returncode == 0, stderr
    assert "300 frames" in stderr, stderr
    assert all(json.loads(line)["event"] != "stalled" for line in events.read_text().splitlines())
