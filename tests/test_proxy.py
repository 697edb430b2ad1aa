"""Fan-in through the proxy: engines -> XSUB/XPUB -> monitors sharded by topic, over 127.0.0.1.

Real sockets on random loopback ports, a timeout on every receive, LINGER=0; the
end-to-end test runs the proxy, two monitors and the merged event view as processes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

from trajwatch.cli import main
from trajwatch.events import Event
from trajwatch.frame import Frame
from trajwatch.simulate import MDSpec, run_md
from trajwatch.sinks import AlertPublisher
from trajwatch.streaming import Publisher, Subscriber, encode
from trajwatch.streaming.alerts import AlertSubscriber
from trajwatch.streaming.proxy import Proxy
from trajwatch.streaming.security import (
    CurveClient,
    curve_available,
    keygen,
    load_client,
    load_server,
)

TIMEOUT = 10.0


def _frame(step: int) -> Frame:
    positions = np.array([[0.0, 0.0, 0.0], [2.5, 0.0, 0.0]]) + 0.01 * step
    return Frame(positions, [29, 29], step=step)


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    with Proxy("tcp://127.0.0.1:*", "tcp://127.0.0.1:*") as running:
        yield running


def test_wait_for_subscriber_sees_a_monitor_behind_the_proxy(proxy: Proxy) -> None:
    with Publisher(proxy.frontend, bind=False, topic="early") as early:
        assert not early.wait_for_subscriber(timeout=0.2)  # nobody behind the proxy yet
        with Subscriber(proxy.backend, topics=("early", "late")) as monitor:
            assert early.wait_for_subscriber(timeout=TIMEOUT)
            # an engine that connects after the monitor subscribed hears of it too: the
            # proxy's XSUB replays its subscriptions to each new publisher
            with Publisher(proxy.frontend, bind=False, topic="late") as late:
                assert late.wait_for_subscriber(timeout=TIMEOUT)
                assert early.send(_frame(0)) and late.send(_frame(0))
                got = [monitor.recv(timeout=TIMEOUT) for _ in range(2)]
    assert sorted(f.source for f in got if f is not None) == ["early", "late"]


def test_an_engine_does_not_mistake_another_shard_for_its_monitor(proxy: Proxy) -> None:
    with Subscriber(proxy.backend, topics=("a/",)):
        with Publisher(proxy.frontend, bind=False, topic="a/1") as watched:
            assert watched.wait_for_subscriber(timeout=TIMEOUT)  # the "a/" prefix is through
        with Publisher(proxy.frontend, bind=False, topic="b/1") as unwatched:
            assert not unwatched.wait_for_subscriber(timeout=0.3)


def test_topics_shard_the_sources_between_monitors(proxy: Proxy) -> None:
    counts = {"a/1": 40, "a/2": 25, "b/1": 50, "b/2": 15}
    with (
        Subscriber(proxy.backend, topics=("a/",)) as monitor_a,
        Subscriber(proxy.backend, topics=("b/",)) as monitor_b,
    ):
        engines = {name: Publisher(proxy.frontend, bind=False, topic=name) for name in counts}
        try:
            for engine in engines.values():
                assert engine.wait_for_subscriber(timeout=TIMEOUT)
            for step in range(max(counts.values())):  # interleaved, as live engines are
                for name, engine in engines.items():
                    if step < counts[name]:
                        assert engine.send(_frame(step))
            received: dict[str, list[int]] = {name: [] for name in counts}
            for monitor, shard in ((monitor_a, "a/"), (monitor_b, "b/")):
                expected = sum(n for name, n in counts.items() if name.startswith(shard))
                for _ in range(expected):
                    frame = monitor.recv(timeout=TIMEOUT)
                    assert frame is not None and frame.source.startswith(shard)
                    received[frame.source].append(frame.step)
                assert monitor.recv(timeout=0.2) is None  # nothing more, nothing twice
        finally:
            for engine in engines.values():
                engine.close()
        stats = proxy.stats()
    assert received == {name: list(range(n)) for name, n in counts.items()}
    for monitor, shard in ((monitor_a, "a/"), (monitor_b, "b/")):
        per = monitor.stats.per_source
        assert sorted(per) == sorted(name for name in counts if name.startswith(shard))
        assert all(per[name].received == counts[name] and per[name].lost == 0 for name in per)
    assert stats.parts_out == stats.parts_in == 4 * sum(counts.values())
    assert stats.subscriptions_in == 2  # "a/" and "b/"


def test_sequence_gaps_are_counted_per_source_across_the_proxy(proxy: Proxy) -> None:
    context = zmq.Context.instance()
    engine = context.socket(zmq.XPUB)  # a producer of our own: it chooses the seq numbers
    engine.setsockopt(zmq.LINGER, 0)
    engine.setsockopt(zmq.RCVTIMEO, int(TIMEOUT * 1000))
    engine.connect(proxy.frontend)
    try:
        with Subscriber(proxy.backend, topics=("gap", "whole")) as monitor:
            assert {engine.recv(), engine.recv()} == {b"\x01gap", b"\x01whole"}
            for i, seq in enumerate((0, 1, 2, 6, 7)):  # "gap" lost its frames 3, 4 and 5
                engine.send_multipart(encode(_frame(seq), topic="gap", seq=seq, stream_id=7))
                engine.send_multipart(encode(_frame(i), topic="whole", seq=i, stream_id=8))
            frames = [monitor.recv(timeout=TIMEOUT) for _ in range(10)]
    finally:
        engine.close()
    assert [f.seq for f in frames if f is not None and f.source == "gap"] == [0, 1, 2, 6, 7]
    assert monitor.stats.per_source["gap"].lost == 3
    assert monitor.stats.per_source["whole"].lost == 0
    assert monitor.stats.lost == 3 and monitor.stats.received == 10


def test_proxy_refuses_a_non_loopback_bind_without_allow_remote() -> None:
    with pytest.raises(ValueError, match="refusing to bind"):
        Proxy("tcp://0.0.0.0:*", "tcp://127.0.0.1:*")
    with pytest.raises(ValueError, match="refusing to bind"):
        Proxy("tcp://127.0.0.1:*", "tcp://*:*")


def test_proxy_stops_and_frees_its_ports() -> None:
    proxy = Proxy("tcp://127.0.0.1:*", "tcp://127.0.0.1:*").start()
    assert proxy.running
    proxy.close()
    assert not proxy.running
    with Proxy(proxy.frontend, proxy.backend):  # the same ports bind again
        pass


def test_across_a_proxy_restart_every_frame_is_received_or_counted_lost() -> None:
    proxy = Proxy("tcp://127.0.0.1:*", "tcp://127.0.0.1:*").start()
    frontend, backend = proxy.frontend, proxy.backend
    seqs: list[int] = []
    done = threading.Event()
    with (
        Subscriber(backend, topics=("r",)) as monitor,
        Publisher(frontend, bind=False, topic="r") as engine,
    ):

        def receive() -> None:  # a monitor is always in its receive loop
            while not done.is_set():
                frame = monitor.recv(timeout=0.05)
                if frame is not None:
                    seqs.append(frame.seq)

        def send_until(count: int) -> None:
            deadline = time.monotonic() + TIMEOUT
            while len(seqs) < count and time.monotonic() < deadline:
                engine.send(_frame(engine.next_seq()))
                time.sleep(0.01)

        receiver = threading.Thread(target=receive)
        receiver.start()
        try:
            assert engine.wait_for_subscriber(timeout=TIMEOUT)
            send_until(5)
            proxy.close()
            for _ in range(5):  # while the proxy is down
                engine.send(_frame(engine.next_seq()))
            proxy = Proxy(frontend, backend).start()  # the same addresses
            before = len(seqs)
            send_until(before + 5)  # engine and monitor reconnect on their own
        finally:
            done.set()
            receiver.join()
            proxy.close()
    assert len(seqs) >= before + 5, "the frames did not come through the new proxy"
    assert seqs == sorted(set(seqs))  # in order, none twice
    # every frame up to the last one received was either received or counted as lost
    assert len(seqs) + monitor.stats.lost == seqs[-1] + 1
    # How many are lost depends on timing: those inside the old proxy when it stopped
    # are gone, those the engine queued while it was down usually arrive on reconnect.
    assert monitor.stats.restarts == 0


# -- the merged event stream -----------------------------------------------------------


def _alarm(source: str, frame: int = 7) -> Event:
    return Event("anomaly", frame, frame, None, source, "zscore", 41.0, 8.0, "critical")


def _through(send: Callable[[], object], events: AlertSubscriber) -> None:
    """Send until one gets through: a PUB applies a subscription once its owner calls into
    it, so what it sends after that first one reaches the subscriber. Then drain."""
    while events.recv(timeout=0.05) is None:
        send()
    while events.recv(timeout=0.2) is not None:
        pass


def test_alert_subscriber_merges_monitors_and_skips_malformed_alerts() -> None:
    context = zmq.Context.instance()
    rogue = context.socket(zmq.PUB)
    rogue.setsockopt(zmq.LINGER, 0)
    port = rogue.bind_to_random_port("tcp://127.0.0.1")
    one, two = AlertPublisher("tcp://127.0.0.1:*"), AlertPublisher("tcp://127.0.0.1:*")
    events = AlertSubscriber([one.endpoint, two.endpoint, f"tcp://127.0.0.1:{port}"])
    try:
        assert events.wait_connected(TIMEOUT) == 3
        _through(lambda: one.emit(_alarm("warm-up")), events)
        _through(lambda: two.emit(_alarm("warm-up")), events)
        warm_up = [b"anomaly/w", _alarm("warm-up").to_json().encode()]
        _through(lambda: rogue.send_multipart(warm_up), events)
        received = events.received
        for parts in ([b"anomaly/x", b"{not json"], [b"x"], [b"anomaly/x", b'{"event":"?"}']):
            rogue.send_multipart(parts)
        rogue.send_multipart([b"anomaly/r1", _alarm("r1", 3).to_json().encode()])  # in order
        one.emit(_alarm("a1"))
        two.emit(_alarm("b1", 9))
        got = [events.recv(timeout=TIMEOUT) for _ in range(3)]
    finally:
        events.close()
        one.close()
        two.close()
        rogue.close()
    assert sorted((e.source, e.frame) for e in got if e is not None) == [
        ("a1", 7),
        ("b1", 9),
        ("r1", 3),
    ]
    assert events.received == received + 3 and events.malformed == 3


# -- end to end: the proxy, two sharded monitors and the merged view, as processes -------


@pytest.fixture(scope="module")
def faulty_runs(clash_frames: list[Frame]) -> dict[str, tuple[list[Frame], int]]:
    """Four engines, a fault in each: source -> (frames, frame of the fault)."""
    kick = list(run_md(MDSpec(steps=160, repeat=2, seed=11, fault="kick", fault_frame=100)))
    dt = list(run_md(MDSpec(steps=160, repeat=2, seed=12, fault="dt", fault_frame=110)))
    return {
        "a/clash": (clash_frames, 150),
        "a/kick": (kick, 100),
        "b/dt": (dt, 110),
        "b/clash": (clash_frames, 150),
    }


def _trajwatch(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "trajwatch", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _free_port() -> str:
    with zmq.Context.instance().socket(zmq.PUB) as probe:
        port = probe.bind_to_random_port("tcp://127.0.0.1")
        probe.setsockopt(zmq.LINGER, 0)
    return f"tcp://127.0.0.1:{port}"


def _monitor(endpoint: str, shard: str, alerts: str, out: Path) -> subprocess.Popen[str]:
    """A monitor of the sources named "<shard>/...", its events logged and re-published."""
    return _trajwatch(
        "monitor", "--no-tui", "--endpoint", endpoint, "--topics", f"{shard}/",
        "--events", str(out / f"{shard}.jsonl"), "--alerts", alerts, "--idle-timeout", "3",
    )  # fmt: skip


@pytest.mark.slow
def test_sharded_monitors_behind_the_proxy_catch_every_fault_once(
    faulty_runs: dict[str, tuple[list[Frame], int]], tmp_path: Path
) -> None:
    proxy = _trajwatch(
        "proxy", "--frontend", "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*"
    )
    processes = [proxy]
    try:
        assert proxy.stderr is not None
        ready = proxy.stderr.readline()
        found = re.search(r"engines connect to (\S+), monitors to (\S+)", ready)
        assert found, ready
        frontend, backend = found.groups()
        alerts = {shard: _free_port() for shard in "ab"}
        monitors = {shard: _monitor(backend, shard, alerts[shard], tmp_path) for shard in "ab"}
        processes += monitors.values()
        one_address = _free_port()
        merged = _trajwatch(
            "events", *alerts.values(), "--json", "--wait", "30", "--alerts", one_address
        )
        processes.append(merged)
        assert merged.stderr is not None
        assert "connected to 2 of 2" in merged.stderr.readline()
        # a tool of the user's, on the one address of the merged stream
        tool = zmq.Context.instance().socket(zmq.SUB)
        tool.setsockopt(zmq.LINGER, 0)
        tool.setsockopt(zmq.RCVTIMEO, int(TIMEOUT * 1000))
        handshake = tool.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        handshake.setsockopt(zmq.RCVTIMEO, 30_000)
        tool.connect(one_address)
        tool.subscribe(b"")
        handshake.recv_multipart()  # the subscription travels right behind it
        tool.disable_monitor()
        handshake.close()

        engines = {name: Publisher(frontend, bind=False, topic=name) for name in faulty_runs}
        try:
            for engine in engines.values():  # each hears of its monitor through the proxy
                assert engine.wait_for_subscriber(timeout=60)
            longest = max(len(frames) for frames, _ in faulty_runs.values())
            for i in range(longest):
                for name, (frames, _) in faulty_runs.items():
                    if i < len(frames):
                        assert engines[name].send(frames[i])
        finally:
            for engine in engines.values():
                engine.close(linger=10)  # deliver what is queued
        outcome = {shard: monitor.communicate(timeout=120) for shard, monitor in monitors.items()}
        merged.send_signal(signal.SIGTERM)
        merged_out, merged_err = merged.communicate(timeout=30)
        republished = []
        with contextlib.suppress(zmq.Again):  # until none is left (the timeout)
            while True:
                republished.append(json.loads(tool.recv_multipart()[1]))
        tool.close()
        proxy.send_signal(signal.SIGTERM)
        _, proxy_err = proxy.communicate(timeout=30)
    finally:
        for process in processes:
            process.kill()
            process.wait()

    logs: dict[str, list[dict[str, object]]] = {}
    for shard, (_, stderr) in outcome.items():
        assert monitors[shard].returncode == 0, stderr
        sources = {name: frames for name, (frames, _) in faulty_runs.items()}
        expected = sum(len(f) for name, f in sources.items() if name.startswith(f"{shard}/"))
        # every frame of its shard exactly once: none missing, none lost, none twice
        assert f"{expected} frames from 2 source(s)" in stderr and "lost 0" in stderr, stderr
        logs[shard] = [
            json.loads(x) for x in (tmp_path / f"{shard}.jsonl").read_text().splitlines()
        ]
    for name, (_, fault) in faulty_runs.items():
        shard = name.split("/")[0]
        for other, events in logs.items():
            anomalies = [e for e in events if e["source"] == name and e["event"] == "anomaly"]
            if other != shard:
                assert not [e for e in events if e["source"] == name]  # watched by one only
                continue
            assert len(anomalies) == 1, events  # caught, once, at its frame of the stream
            assert fault <= anomalies[0]["frame"] <= fault + 3  # type: ignore[operator]

    assert merged.returncode == 0, merged_err
    stream = [json.loads(line) for line in merged_out.splitlines()]
    assert sorted(map(json.dumps, stream)) == sorted(map(json.dumps, logs["a"] + logs["b"]))
    assert republished == stream  # the merged stream, again, on one address
    assert proxy.returncode == 0, proxy_err
    assert "parts" in proxy_err.splitlines()[-1]


# -- the commands ----------------------------------------------------------------------


@pytest.mark.parametrize("command", ["proxy", "events"])
def test_the_scaling_commands_have_examples(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--help"]) == 0
    assert f"trajwatch {command}" in capsys.readouterr().out.split("examples:")[1]


def test_proxy_command_refuses_a_remote_bind_without_allow_remote(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["proxy", "--frontend", "tcp://0.0.0.0:5554"]) == 1
    assert "refusing to bind 'tcp://0.0.0.0:5554'" in capsys.readouterr().err


def test_proxy_command_checks_its_curve_options_and_warns_when_remote_in_clear(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    assert main(["proxy", "--curve-allow", "engine.key"]) == 1
    assert "--curve-allow needs --curve-server-key" in capsys.readouterr().err
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: the bind fails after the warning
    with caplog.at_level(logging.WARNING, logger="trajwatch"):
        code = main(["proxy", "--allow-remote", "--frontend", "tcp://192.0.2.1:0"])
    assert code == 1
    assert "without CurveZMQ" in caplog.text


def test_an_event_line_of_the_merged_view_names_source_kind_severity_and_frame() -> None:
    from rich.console import Console

    from trajwatch.cli import _event_line

    console = Console(record=True, width=120, color_system=None)
    console.print(_event_line(_alarm("b/run2", 42)))
    text = console.export_text()
    assert "b/run2" in text and "anomaly" in text and "critical" in text and "frame 42" in text


# -- CurveZMQ through the proxy --------------------------------------------------------


@pytest.mark.skipif(not curve_available(), reason="libzmq without CURVE")
def test_a_curve_proxy_lets_only_allowed_engines_and_monitors_in(tmp_path: Path) -> None:
    keys = {name: keygen(tmp_path, name) for name in ("proxy", "engine", "monitor", "intruder")}
    allowed = [keys["engine"][0], keys["monitor"][0]]

    def client(name: str) -> CurveClient:
        return load_client(keys[name][1], server=keys["proxy"][0])

    server = load_server(keys["proxy"][1], allow=allowed)
    with (
        Proxy("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", curve=server) as proxy,
        Subscriber(proxy.backend, topics=("s",), curve=client("monitor")) as monitor,
        Subscriber(proxy.backend, topics=("s",), curve=client("intruder")) as intruder,
        Subscriber(proxy.backend, topics=("s",)) as plain,
        Publisher(proxy.frontend, bind=False, topic="s", curve=client("engine")) as engine,
    ):
        assert engine.wait_for_subscriber(timeout=TIMEOUT)  # the monitor's, through CURVE
        deadline = time.monotonic() + TIMEOUT
        while monitor.recv(timeout=0.05) is None and time.monotonic() < deadline:
            engine.send(_frame(engine.next_seq()))
        assert monitor.stats.received >= 1
        for _ in range(20):  # the others had all this time to join
            engine.send(_frame(engine.next_seq()))
            assert intruder.recv(timeout=0.02) is None and plain.recv(timeout=0.02) is None
        assert proxy.gatekeeper is not None
        assert proxy.gatekeeper.accepted >= 2 and proxy.gatekeeper.denied >= 1
