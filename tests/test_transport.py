"""Publisher and Subscriber over real ZeroMQ sockets on tcp://127.0.0.1, random ports.

Every receive has a timeout and every socket LINGER=0, so a failing test fails fast.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from trajwatch.frame import Frame
from trajwatch.streaming import Publisher, Subscriber, encode
from trajwatch.streaming.protocol import FLAG_CELL, FLAG_ENERGY, FLAG_TIME, FLAG_VELOCITIES

LOCAL = "tcp://127.0.0.1:*"
TIMEOUT = 5.0  # seconds; generous for a loaded 2-core machine, never reached when green


def make_frame(n: int = 4, *, step: int = 0, source: str = "", seed: int = 0) -> Frame:
    rng = np.random.default_rng(seed)
    return Frame(
        rng.normal(size=(n, 3)),
        rng.integers(1, 30, size=n),
        velocities=rng.normal(size=(n, 3)),
        energy=float(rng.normal()),
        cell=np.eye(3) * 10.0,
        step=step,
        time=0.5 * step,
        source=source,
    )


def join(pub: Publisher, sub: Subscriber) -> None:
    """Wait until ``sub`` has joined ``pub``, driving both from this one thread.

    libzmq attaches a connection to a *bound* socket only when that socket's owner calls
    into it, so a bound Subscriber must be polled while the Publisher waits (a monitor in
    its own process does that in its receive loop).
    """
    deadline = time.monotonic() + TIMEOUT
    while not pub.wait_for_subscriber(0.01):
        assert sub.recv(0) is None
        assert time.monotonic() < deadline, "subscriber did not join"


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.term()


@pytest.fixture
def raw_socket() -> Iterator[Callable[[int], tuple[zmq.Socket[Any], str]]]:
    """Factory for a bare bound socket (to send hand-made messages); closed afterwards."""
    context: zmq.Context[Any] = zmq.Context()
    sockets: list[zmq.Socket[Any]] = []

    def make(kind: int) -> tuple[zmq.Socket[Any], str]:
        sock = context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, int(TIMEOUT * 1000))  # a PUSH with no peer blocks
        sockets.append(sock)
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        return sock, f"tcp://127.0.0.1:{port}"

    yield make
    for sock in sockets:
        sock.close()
    context.term()


@pytest.fixture
def pair() -> Iterator[tuple[Publisher, Subscriber]]:
    pub = Publisher(LOCAL, topic="md")
    sub = Subscriber(pub.endpoint)
    try:
        assert pub.wait_for_subscriber(TIMEOUT)
        yield pub, sub
    finally:
        sub.close()
        pub.close()


def test_round_trip_over_pub_sub(pair: tuple[Publisher, Subscriber]) -> None:
    pub, sub = pair
    sent = [make_frame(5, step=i, seed=i) for i in range(3)]
    assert all(pub.send(f) for f in sent)
    for i, want in enumerate(sent):
        got = sub.recv(TIMEOUT)
        assert got is not None
        assert (got.source, got.seq, got.step, got.time) == ("md", i, i, 0.5 * i)
        np.testing.assert_array_equal(got.positions, want.positions)
        np.testing.assert_array_equal(got.velocities, want.velocities)
        np.testing.assert_array_equal(got.numbers, want.numbers)
        np.testing.assert_array_equal(got.cell, want.cell)
        assert got.energy == want.energy and got.forces is None
    assert pub.sent == 3 and pub.dropped == 0
    assert sub.stats.received == 3 and sub.stats.lost == 0 and sub.stats.malformed == 0
    assert sub.recv(0.05) is None


def test_publisher_stamps_the_send_time(pair: tuple[Publisher, Subscriber]) -> None:
    pub, sub = pair
    before = time.time()
    assert pub.send(make_frame(2))
    forwarded = make_frame(2)
    forwarded.wall_time = 1234.5  # a frame passed on keeps its origin's stamp
    assert pub.send(forwarded)
    first, second = sub.recv(TIMEOUT), sub.recv(TIMEOUT)
    assert first is not None and second is not None
    assert first.wall_time is not None and before - 1e-3 <= first.wall_time <= time.time()
    assert second.wall_time == 1234.5


# -- the fused socket receive path agrees with decode(), over random frames -----------


@pytest.fixture(scope="module")
def raw_pair() -> Iterator[tuple[zmq.Socket[Any], Subscriber]]:
    """A bare PUSH socket (any dtype on the wire) feeding a lossless Subscriber."""
    context: zmq.Context[Any] = zmq.Context()
    raw = context.socket(zmq.PUSH)
    raw.setsockopt(zmq.LINGER, 0)
    raw.setsockopt(zmq.SNDTIMEO, int(TIMEOUT * 1000))
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    sub = Subscriber(f"tcp://127.0.0.1:{port}", lossless=True)
    try:
        yield raw, sub
    finally:
        sub.close()
        raw.close()
        context.term()


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    n = draw(st.integers(0, 500))
    arr = hnp.arrays(np.float64, (n, 3), elements=st.floats(-1e4, 1e4, width=64))
    has_cell = draw(st.booleans())
    return Frame(
        draw(arr),
        draw(hnp.arrays(np.int32, (n,), elements=st.integers(0, 118))),
        velocities=draw(st.none() | arr),
        forces=draw(st.none() | arr),
        energy=draw(st.none() | st.floats(allow_nan=False)),
        cell=draw(hnp.arrays(np.float64, (3, 3), elements=st.floats(-50, 50)))
        if has_cell
        else None,
        pbc=draw(st.lists(st.booleans(), min_size=3, max_size=3)),
        step=draw(st.integers(-(2**63), 2**63 - 1)),
        time=draw(st.none() | st.floats(-1e9, 1e9)),
        source=draw(st.text(max_size=12)),
    )


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(frames(), st.sampled_from([np.float64, np.float32]))
def test_socket_path_matches_decode(
    raw_pair: tuple[zmq.Socket[Any], Subscriber], frame: Frame, wire: type
) -> None:
    raw, sub = raw_pair
    raw.send_multipart(encode(frame, dtype=wire), copy=False)
    got = sub.recv(TIMEOUT)
    assert got is not None
    cast = lambda a: a.astype(wire).astype(np.float64)  # noqa: E731
    np.testing.assert_array_equal(got.positions, cast(frame.positions))
    np.testing.assert_array_equal(got.numbers, frame.numbers)
    for name in ("velocities", "forces"):
        a, b = getattr(got, name), getattr(frame, name)
        assert (a is None) == (b is None)
        if b is not None:
            np.testing.assert_array_equal(a, cast(b))
    assert (got.energy, got.time, got.step, got.source) == (
        frame.energy,
        frame.time,
        frame.step,
        frame.source,
    )
    np.testing.assert_array_equal(got.pbc, frame.pbc)
    assert (got.cell is None) == (frame.cell is None)
    if frame.cell is not None:
        np.testing.assert_array_equal(got.cell, frame.cell)
    for a in (got.positions, got.velocities, got.forces):
        if a is not None:
            assert a.flags.owndata and a.base is None and a.flags.writeable
    # numbers, cell and pbc: read-only, so the frames of one source can share them
    for a in (got.numbers, got.cell):
        if a is not None:
            assert a.flags.owndata and a.base is None and not a.flags.writeable
    assert not got.pbc.flags.writeable
    assert sub.stats.malformed == 0


def test_received_frames_do_not_alias_each_other(pair: tuple[Publisher, Subscriber]) -> None:
    pub, sub = pair
    for i in range(2):
        pub.send(make_frame(2000, step=i, seed=i))  # large parts: the zero-copy paths
    a, b = sub.recv(TIMEOUT), sub.recv(TIMEOUT)
    assert a is not None and b is not None
    before = b.positions.copy()
    a.positions[:] = 0.0
    np.testing.assert_array_equal(b.positions, before)
    assert not np.shares_memory(a.positions, b.positions)
    assert a.positions.flags.owndata and b.positions.flags.owndata
    with pytest.raises(ValueError, match="read-only"):
        a.numbers[:] = 0  # shared by the source's frames, so nobody may change it


def test_a_source_s_frames_share_its_numbers_until_they_change(
    pair: tuple[Publisher, Subscriber],
) -> None:
    """The numbers part is checked and copied when it differs from the source's last
    one; frames with the same numbers share that read-only array."""
    pub, sub = pair
    first = make_frame(50)
    species = [first.numbers, first.numbers, np.where(first.numbers == 8, 1, 8)]
    frames = [
        Frame(first.positions + 0.01 * i, numbers, energy=-1.0, cell=first.cell, step=i)
        for i, numbers in enumerate(species)
    ]
    for frame in frames:
        pub.send(frame)
    got = [sub.recv(TIMEOUT) for _ in frames]
    assert all(g is not None for g in got)
    a, b, c = got  # type: ignore[misc]
    assert b.numbers is a.numbers
    assert c.numbers is not a.numbers
    np.testing.assert_array_equal(c.numbers, frames[2].numbers)
    np.testing.assert_array_equal(a.numbers, frames[0].numbers)


# -- malformed messages over a real socket --------------------------------------------


def good(seq: int, topic: bytes = b"md") -> list[Any]:
    return encode(make_frame(3, step=seq), topic=topic.decode(), seq=seq)


def patched(offset: int, fmt: str, *values: Any) -> list[Any]:
    parts = [bytes(memoryview(p)) for p in good(0)]
    header = bytearray(parts[1])
    struct.pack_into(fmt, header, offset, *values)
    parts[1] = bytes(header)
    return parts


BAD: dict[str, list[Any]] = {
    "topic only": [b"md"],
    "two parts": good(0)[:2],
    "truncated header": [b"md", bytes(memoryview(good(0)[1]))[:60], *good(0)[2:]],
    "empty header": [b"md", b"", *good(0)[2:]],
    "wrong magic": patched(0, "4s", b"MDMD"),
    "wrong version": patched(4, "B", 7),
    "dtype code": patched(5, "B", 0),
    "unknown flags": patched(6, "<H", 0x8000),
    "nan cell": patched(48, "<d", float("nan")),
    "absurd n_atoms": patched(8, "<I", 4_000_000_000),
    "size mismatch": patched(8, "<I", 2),
    "float32 size": patched(5, "B", 2),
    "short positions": [*good(0)[:2], b"\0" * 71, *good(0)[3:]],
    "long positions": [*good(0)[:2], b"\0" * 73, *good(0)[3:]],
    "short numbers": [*good(0)[:3], b"\1\0\0\0", *good(0)[4:]],
    "missing velocities": good(0)[:4],
    "flag without part": patched(6, "<H", FLAG_VELOCITIES | FLAG_ENERGY | 0x0002),
    "extra part": [*good(0), b"x" * 10],
    "two extra parts": [*good(0), b"x", b"y" * 100_000],
    "bad utf-8": [b"\xc3\x28", *good(0)[1:]],
    "atomic number": [*good(0)[:3], struct.pack("<3i", 1, 1, 999), *good(0)[4:]],
    "no flags but parts": patched(6, "<H", FLAG_CELL | FLAG_TIME),
}


@pytest.mark.parametrize("lossless", [False, True], ids=["pub-sub", "push-pull"])
def test_malformed_messages_are_counted_and_skipped(
    raw_socket: Any, lossless: bool, caplog: pytest.LogCaptureFixture
) -> None:
    raw, endpoint = raw_socket(zmq.PUSH if lossless else zmq.PUB)
    with Subscriber(endpoint, lossless=lossless) as sub:
        # past the slow-joiner window: resend frame 0 until one arrives
        deadline = time.monotonic() + TIMEOUT
        first = None
        while first is None and time.monotonic() < deadline:
            raw.send_multipart(good(0))
            first = sub.recv(0.05)
        assert first is not None
        while sub.recv(0.05) is not None:  # duplicates of frame 0 (PUB resends)
            pass
        base = sub.stats.malformed
        caplog.set_level(logging.WARNING, logger="trajwatch.streaming")
        for i, (name, parts) in enumerate(sorted(BAD.items()), start=1):
            raw.send_multipart(parts)
            raw.send_multipart(good(i))
            frame = sub.recv(TIMEOUT)
            assert frame is not None, name
            assert frame.step == i, name
            assert sub.stats.malformed == base + i, (name, sub.stats.last_error)
        assert sub.recv(0.05) is None
        # rate-limited logging: far fewer lines than malformed messages
        lines = [r for r in caplog.records if r.name == "trajwatch.streaming"]
        assert 1 <= len(lines) <= 3
        assert "malformed" in lines[0].getMessage()


def test_oversized_part_never_reaches_python(raw_socket: Any) -> None:
    """MAXMSGSIZE makes libzmq drop the peer before allocating a too-large part."""
    raw, endpoint = raw_socket(zmq.PUSH)
    with Subscriber(endpoint, lossless=True, max_bytes=10_000) as sub:
        raw.send_multipart([b"md", b"\0" * 50_000])
        assert sub.recv(0.3) is None
        assert sub.stats.received == 0


def test_limits_apply_on_the_socket_path(raw_socket: Any) -> None:
    raw, endpoint = raw_socket(zmq.PUSH)
    with Subscriber(endpoint, lossless=True, max_atoms=10) as sub:
        raw.send_multipart(encode(make_frame(11)))
        raw.send_multipart(encode(make_frame(10)))
        frame = sub.recv(TIMEOUT)
        assert frame is not None and frame.n_atoms == 10
        assert sub.stats.malformed == 1 and "limit of 10" in sub.stats.last_error


# -- sequence numbers: HWM drops, restarts, lossless ---------------------------------


def test_hwm_drops_are_counted_on_both_sides() -> None:
    """A subscriber that does not read: the publisher drops at its HWM, never blocks."""
    with (
        Publisher(LOCAL, topic="md", hwm=5) as pub,
        Subscriber(pub.endpoint, hwm=5) as sub,
    ):
        assert pub.wait_for_subscriber(TIMEOUT)
        frame = make_frame(5000)  # 300 kB messages fill the TCP buffers quickly
        t0 = time.perf_counter()
        results = [pub.send(frame) for _ in range(300)]
        elapsed = time.perf_counter() - t0
        assert elapsed < 10.0  # never blocked waiting for the reader
        assert pub.dropped > 0 and not all(results)
        assert pub.sent + pub.dropped == 300
        got = list(sub.frames(idle_timeout=0.3))
        assert pub.send(frame)  # one last frame, so the subscriber sees the final gap
        last = sub.recv(TIMEOUT)
        assert last is not None and last.seq == 300
        seqs = [f.seq for f in got]
        assert seqs == sorted(seqs)
        assert len(got) + 1 == pub.sent
        assert sub.stats.lost == pub.dropped
        assert sub.stats.per_source["md"].lost == pub.dropped
        assert sub.stats.restarts == 0


def test_publisher_restart_is_a_restart_not_a_gap() -> None:
    """Fan-in layout: the subscriber binds, successive publishers connect."""
    with Subscriber(LOCAL, bind=True) as sub:
        for run, n in enumerate((5, 3, 12)):
            with Publisher(sub.endpoint, bind=False, topic="md") as pub:
                join(pub, sub)
                for step in range(n):
                    assert pub.send(make_frame(3, step=step))
                for _ in range(n):
                    assert sub.recv(TIMEOUT) is not None
            assert sub.stats.restarts == run
        assert sub.stats.lost == 0
        assert sub.stats.received == 20
        assert sub.stats.per_source["md"].restarts == 2


def test_restart_detected_from_sequence_alone() -> None:
    """A producer without a stream id (0, e.g. a C engine) restarts: seq goes back."""
    with Subscriber(LOCAL, bind=True, lossless=True) as sub:
        for _run in range(2):
            with Publisher(sub.endpoint, bind=False, topic="c", lossless=True, stream_id=0) as pub:
                join(pub, sub)
                for step in range(4):
                    assert pub.send(make_frame(2, step=step))
                for _ in range(4):
                    assert sub.recv(TIMEOUT) is not None
        assert (sub.stats.restarts, sub.stats.lost, sub.stats.received) == (1, 0, 8)


def test_gaps_and_restarts_per_source(raw_socket: Any) -> None:
    raw, endpoint = raw_socket(zmq.PUSH)
    with Subscriber(endpoint, lossless=True) as sub:
        plan = [("a", 10, 1), ("b", 0, 1), ("a", 11, 1), ("a", 15, 1), ("b", 1, 1)]
        plan += [("a", 2, 1), ("b", 0, 2), ("b", 5, 2)]
        for source, seq, sid in plan:
            raw.send_multipart(encode(make_frame(2), topic=source, seq=seq, stream_id=sid))
        for _ in plan:
            assert sub.recv(TIMEOUT) is not None
        a, b = sub.stats.per_source["a"], sub.stats.per_source["b"]
        # a: 10 first seen, 11 ok, 15 lost 3, 2 is a restart that missed 0 and 1
        assert (a.received, a.lost, a.restarts, a.last_seq) == (4, 5, 1, 2)
        # b: 0, 1, then stream id 2 starts at 0 (restart), 5 loses 1..4
        assert (b.received, b.lost, b.restarts, b.last_seq) == (4, 4, 1, 5)
        assert (sub.stats.lost, sub.stats.restarts, sub.stats.received) == (9, 2, 8)


def test_per_frame_topics_have_their_own_sequences() -> None:
    with Publisher(LOCAL) as pub, Subscriber(pub.endpoint, topics=["x"]) as sub:
        assert pub.wait_for_subscriber(TIMEOUT)
        for source in ["x1", "y", "x1", "x2", "y", "x1"]:
            assert pub.send(make_frame(2, source=source))
        got = [(f.source, f.seq) for f in sub.frames(idle_timeout=0.3)]
        assert got == [("x1", 0), ("x1", 1), ("x2", 0), ("x1", 2)]
        assert pub.next_seq("y") == 2 and sub.stats.lost == 0


def test_lossless_push_pull_delivers_everything() -> None:
    with (
        Publisher(LOCAL, topic="replay", lossless=True, hwm=4, send_timeout=TIMEOUT) as pub,
        Subscriber(pub.endpoint, lossless=True, hwm=4) as sub,
    ):
        assert pub.wait_for_subscriber(TIMEOUT)

        def produce() -> None:
            for step in range(400):
                assert pub.send(make_frame(300, step=step))

        thread = threading.Thread(target=produce)
        thread.start()
        steps = []
        for _ in range(400):
            frame = sub.recv(TIMEOUT)
            assert frame is not None
            steps.append(frame.step)
            if len(steps) % 50 == 0:
                time.sleep(0.01)  # a slow reader: the sender must wait, not drop
        thread.join(TIMEOUT)
        assert steps == list(range(400))
        assert (pub.sent, pub.dropped) == (400, 0)
        assert (sub.stats.received, sub.stats.lost) == (400, 0)


def test_lossless_send_timeout_counts_a_drop() -> None:
    """A consumer that stopped reading must not hang a replay forever if told so."""
    with (
        Publisher(LOCAL, lossless=True, hwm=1, send_timeout=0.05) as pub,
        Subscriber(pub.endpoint, lossless=True, hwm=1) as sub,
    ):
        assert pub.wait_for_subscriber(TIMEOUT)
        frame = make_frame(20_000)  # 1.4 MB: the TCP buffers fill after a few
        t0 = time.monotonic()
        results = [pub.send(frame) for _ in range(40)]
        assert time.monotonic() - t0 < 20 * 0.05 + 5.0
        assert not all(results) and pub.dropped == results.count(False)
        assert pub.sent + pub.dropped == 40 and sub.stats.received == 0


def test_lossless_topic_filter_in_software() -> None:
    with (
        Publisher(LOCAL, lossless=True) as pub,
        Subscriber(pub.endpoint, lossless=True, topics=("keep",)) as sub,
    ):
        for source in ("keep", "drop", "keep2"):
            pub.send(make_frame(1, source=source))
        assert [f.source for f in sub.frames(idle_timeout=0.3)] == ["keep", "keep2"]


def test_wait_for_subscriber_avoids_slow_joiner_loss() -> None:
    for _ in range(3):
        with Publisher(LOCAL, topic="md") as pub, Subscriber(pub.endpoint) as sub:
            assert pub.wait_for_subscriber(TIMEOUT)
            for step in range(50):
                assert pub.send(make_frame(10, step=step))
            steps = [f.step for f in sub.frames(idle_timeout=0.5)]
            assert steps == list(range(50))


def test_wait_for_subscriber_times_out_and_checks_the_topic() -> None:
    with Publisher(LOCAL, topic="md") as pub:
        t0 = time.monotonic()
        assert not pub.wait_for_subscriber(0.1)
        assert 0.05 < time.monotonic() - t0 < 2.0
        with Subscriber(pub.endpoint, topics=("other",)):
            assert not pub.wait_for_subscriber(0.3)  # subscribed, but not to us
            with Subscriber(pub.endpoint, topics=("m",)):
                assert pub.wait_for_subscriber(TIMEOUT)  # "m" is a prefix of "md"
    with Publisher(LOCAL, lossless=True) as pub:
        assert not pub.wait_for_subscriber(0.1)
        with Subscriber(pub.endpoint, lossless=True):
            assert pub.wait_for_subscriber(TIMEOUT)


def test_send_never_blocks_without_subscribers() -> None:
    with Publisher(LOCAL, topic="md", hwm=1) as pub:
        t0 = time.perf_counter()
        for _ in range(100):
            pub.send(make_frame(3))
        assert time.perf_counter() - t0 < 1.0
        assert pub.sent + pub.dropped == 100 and pub.next_seq() == 100


# -- endpoints, lifetime -------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["tcp://0.0.0.0:*", "tcp://*:*", "tcp://[::]:*"])
def test_refuses_to_bind_beyond_loopback(endpoint: str) -> None:
    with pytest.raises(ValueError, match="allow_remote=True"):
        Publisher(endpoint)
    with pytest.raises(ValueError, match="allow_remote=True"):
        Subscriber(endpoint, bind=True)


def test_allow_remote_binds_all_interfaces() -> None:
    with Publisher("tcp://0.0.0.0:*", allow_remote=True) as pub:
        assert pub.endpoint.startswith("tcp://0.0.0.0:")
    # connecting anywhere is the caller's choice and needs no flag
    with Subscriber("tcp://192.0.2.1:5555"):
        pass


def test_recv_timeout_and_close() -> None:
    sub = Subscriber(LOCAL, bind=True)
    t0 = time.monotonic()
    assert sub.recv(0.1) is None
    assert 0.05 < time.monotonic() - t0 < 2.0
    assert sub.recv(0) is None
    assert list(sub.frames(idle_timeout=0.05)) == []
    sub.close()
    sub.close()  # idempotent
    assert sub.closed and list(sub) == []


def test_shared_context_is_left_open(ctx: zmq.Context[Any]) -> None:
    with Publisher(LOCAL, context=ctx) as pub, Subscriber(pub.endpoint, context=ctx) as sub:
        assert pub.wait_for_subscriber(TIMEOUT)
        pub.send(make_frame())
        assert sub.recv(TIMEOUT) is not None
    assert not ctx.closed


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="float64 or float32"):
        Publisher(LOCAL, dtype=np.int64)
    with pytest.raises(TypeError, match="topics"):
        Subscriber(LOCAL, topics="md")  # type: ignore[arg-type]
    with pytest.raises(zmq.ZMQError):
        Publisher("tcp://127.0.0.1:notaport")
