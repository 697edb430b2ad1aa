"""Fuzzing the protocol v1 decoder: hostile messages are a counted, clear error, nothing else.

Three kinds of input: headers built from random but plausible field values (so the
fuzzer gets past the magic and version checks into the size logic), valid messages with
bit flips, truncations and parts added, dropped or swapped, and plain random bytes. For
each: :func:`decode` returns a frame consistent with its header or raises
:class:`ProtocolError`, never anything else, allocates no more than the input's size
(plus a small constant), and the :class:`Subscriber`'s socket path reaches the same
verdict. ``tests/test_protocol.py`` holds the hand-made cases; ``fuzz/`` the atheris
harness for longer runs.
"""

from __future__ import annotations

import contextlib
import faulthandler
import struct
import sys
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trajwatch.frame import Frame
from trajwatch.streaming import ProtocolError, Subscriber, decode, encode
from trajwatch.streaming import protocol as proto

EXAMPLE_SECONDS = 5.0  # per example: far above what any decode takes; a hang fails fast
TIMEOUT = 5.0
FUZZ = settings(
    max_examples=300,
    deadline=EXAMPLE_SECONDS * 1000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(autouse=True)
def watchdog() -> Iterator[None]:
    """A hang (even inside C code) dumps every thread's stack and ends the run."""
    faulthandler.dump_traceback_later(120, exit=True, file=sys.stderr)
    yield
    faulthandler.cancel_dump_traceback_later()


# -- strategies ----------------------------------------------------------------------

N_ATOMS = st.one_of(
    st.integers(0, 8),
    st.integers(0, 8),
    st.sampled_from([2**31 - 1, 2**31, 2**32 - 1, proto.DEFAULT_MAX_ATOMS + 1, 357_913_942]),
    st.integers(0, 2**32 - 1),
)
CELL = st.floats(-1e3, 1e3) | st.floats()  # mostly finite: a non-finite cell is rejected
FLOAT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324]),
)


CORRUPTIBLE = ("magic", "version", "code", "flags", "pbc", "reserved")


@st.composite
def headers(draw: st.DrawFn) -> tuple[bytes, int, int, int]:
    """A 128-byte header, valid but for at most one fixed field; (bytes, n_atoms, flags,
    itemsize). Sizes, numbers and floats are anything their types hold."""
    bad = draw(st.sampled_from((None,) * 3 * len(CORRUPTIBLE) + CORRUPTIBLE))
    n_atoms = draw(N_ATOMS)
    flags = draw(st.integers(0, 0xFFFF)) if bad == "flags" else draw(st.integers(0, 0x1F))
    code = draw(st.integers(0, 255)) if bad == "code" else draw(st.sampled_from([1, 2]))
    header = struct.pack(
        "<4sBBHIIQqdd9dB7s",
        draw(st.binary(min_size=4, max_size=4)) if bad == "magic" else proto.MAGIC,
        draw(st.integers(0, 255)) if bad == "version" else proto.VERSION,
        code,
        flags,
        n_atoms,
        draw(st.integers(0, 2**32 - 1)),
        draw(st.integers(0, 2**64 - 1)),
        draw(st.integers(-(2**63), 2**63 - 1)),
        draw(FLOAT),
        draw(FLOAT),
        *draw(st.lists(CELL, min_size=9, max_size=9)),
        draw(st.integers(0, 255)) if bad == "pbc" else draw(st.integers(0, 7)),
        draw(st.binary(min_size=7, max_size=7)) if bad == "reserved" else bytes(7),
    )
    return header, n_atoms, flags, {1: 8, 2: 4}.get(code, 8)


@st.composite
def plausible_messages(draw: st.DrawFn) -> list[bytes]:
    """A header plus parts whose sizes mostly match it (small n_atoms), or do not."""
    header, n_atoms, flags, itemsize = draw(headers())
    n = n_atoms if n_atoms <= 8 else draw(st.integers(0, 8))
    sizes = [3 * n * itemsize, 4 * n]
    sizes += [3 * n * itemsize] * ((flags & 1) + ((flags >> 1) & 1))
    parts = [draw(st.text(max_size=8)).encode("utf-8", "surrogatepass"), header]
    for size in sizes:
        if draw(st.sampled_from(["right size", "right size", "any size"])) == "any size":
            size = draw(st.integers(0, size + 16))
        if size == 4 * n and len(parts) == 3:  # numbers: mostly valid atomic numbers
            values = draw(st.lists(st.integers(0, 118) | st.integers(-(2**31), 2**31 - 1),
                                   min_size=n, max_size=n))  # fmt: skip
            parts.append(struct.pack(f"<{n}i", *values))
        else:
            parts.append(draw(st.binary(min_size=size, max_size=size)))
    # mostly the parts in order (hypothesis favours the first choice), sometimes not
    shape = draw(st.sampled_from(["in order"] * 6 + ["shuffled", "one short", "one more"]))
    if shape == "shuffled":
        parts = draw(st.permutations(parts))
    elif shape == "one short":
        parts = parts[: len(parts) - 1]
    elif shape == "one more":
        parts.append(draw(st.binary(max_size=32)))
    return parts


def valid_message(seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 6))
    frame = Frame(
        rng.normal(size=(n, 3)),
        rng.integers(0, 119, size=n),
        velocities=rng.normal(size=(n, 3)) if seed % 2 else None,
        forces=rng.normal(size=(n, 3)) if seed % 3 == 0 else None,
        energy=float(rng.normal()) if seed % 5 else None,
        cell=np.eye(3) * 7.0 if seed % 2 == 0 else None,
        time=1.5 * seed if seed % 4 else None,
        step=seed,
    )
    return [bytes(memoryview(p)) for p in encode(frame, topic=f"s{seed}", seq=seed)]


@st.composite
def mutated_messages(draw: st.DrawFn) -> list[bytes]:
    """A valid message with bytes flipped, parts truncated, dropped, duplicated or added."""
    parts = [bytearray(p) for p in valid_message(draw(st.integers(0, 50)))]
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(["flip", "set", "truncate", "drop", "dup", "add", "swap"]))
        index = draw(st.integers(0, len(parts) - 1)) if parts else 0
        if action in ("flip", "set") and parts and parts[index]:
            at = draw(st.integers(0, len(parts[index]) - 1))
            if action == "flip":
                parts[index][at] ^= 1 << draw(st.integers(0, 7))
            else:
                parts[index][at] = draw(st.integers(0, 255))
        elif action == "truncate" and parts:
            parts[index] = parts[index][: draw(st.integers(0, len(parts[index])))]
        elif action == "drop" and parts:
            del parts[index]
        elif action == "dup" and parts:
            parts.insert(index, bytearray(parts[index]))
        elif action == "add":
            parts.insert(index, bytearray(draw(st.binary(max_size=64))))
        elif action == "swap" and len(parts) > 1:
            other = draw(st.integers(0, len(parts) - 1))
            parts[index], parts[other] = parts[other], parts[index]
    return [bytes(p) for p in parts]


ANY_MESSAGE = st.one_of(
    plausible_messages(),
    mutated_messages(),
    st.lists(st.binary(max_size=300), max_size=8),
)


# -- properties ----------------------------------------------------------------------


def check_frame(frame: Frame, parts: list[bytes]) -> None:
    """A decoded frame agrees with its own header and owns well-formed arrays."""
    header = proto.parse_header(parts[1])
    n = header.n_atoms
    assert frame.positions.shape == (n, 3) and frame.positions.dtype == np.float64
    assert frame.numbers.shape == (n,) and frame.numbers.dtype == np.int32
    assert ((frame.numbers >= 0) & (frame.numbers <= proto.MAX_ATOMIC_NUMBER)).all()
    for array in (frame.velocities, frame.forces):
        assert array is None or array.shape == (n, 3)
    assert frame.cell is None or (frame.cell.shape == (3, 3) and np.isfinite(frame.cell).all())
    assert frame.time is None or np.isfinite(frame.time)
    assert frame.pbc.shape == (3,)
    assert len(parts) == proto.expected_parts(header.flags)


def verdict(parts: list[bytes], **limits: int) -> Frame | str:
    """The frame, or the ProtocolError's text; any other exception fails the test."""
    try:
        frame = decode(parts, **limits)
    except ProtocolError as error:
        reason = str(error)
        assert reason and "Traceback" not in reason
        return reason
    check_frame(frame, parts)
    return frame


@FUZZ
@given(ANY_MESSAGE)
def test_decode_returns_a_consistent_frame_or_a_protocol_error(parts: list[bytes]) -> None:
    verdict(parts)


@FUZZ
@given(plausible_messages(), st.integers(0, 16), st.integers(0, 2000))
def test_limits_hold_for_any_header(parts: list[bytes], max_atoms: int, max_bytes: int) -> None:
    got = verdict(parts, max_atoms=max_atoms, max_bytes=max_bytes)
    if isinstance(got, Frame):
        assert got.n_atoms <= max_atoms
        assert sum(len(p) for p in parts) <= max_bytes


@settings(max_examples=150, deadline=EXAMPLE_SECONDS * 1000)
@given(ANY_MESSAGE)
def test_decode_allocates_no_more_than_it_was_given(parts: list[bytes]) -> None:
    """Whatever a header claims, decode's allocations are bounded by the input's size."""
    given_bytes = sum(len(p) for p in parts)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        with contextlib.suppress(ProtocolError):
            decode(parts)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # float32 parts are widened to float64 (2x), plus objects, the cell and the message
    assert peak <= 2 * given_bytes + 64 * 1024, (peak, given_bytes)


def test_a_header_claiming_a_huge_frame_allocates_nothing_big() -> None:
    header = struct.pack(
        "<4sBBHIIQqdd9dB7s", proto.MAGIC, 1, 1, 0x3, 2**32 - 1, 0, 0, 0, 0.0, 0.0,
        *[0.0] * 9, 0, bytes(7),
    )  # fmt: skip
    for limits in ({}, {"max_atoms": 2**32}, {"max_atoms": 2**32, "max_bytes": 2**62}):
        tracemalloc.start()
        try:
            with pytest.raises(ProtocolError):
                decode([b"x", header, b"", b"", b"", b""], **limits)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 64 * 1024


# -- the socket path reaches the same verdict, and survives -------------------------


@pytest.fixture(scope="module")
def raw_pair() -> Iterator[tuple[zmq.Socket[Any], Subscriber]]:
    context: zmq.Context[Any] = zmq.Context()
    raw = context.socket(zmq.PUSH)
    raw.setsockopt(zmq.LINGER, 0)
    raw.setsockopt(zmq.SNDTIMEO, int(TIMEOUT * 1000))
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    sub = Subscriber(f"tcp://127.0.0.1:{port}", lossless=True, max_atoms=1000)
    try:
        yield raw, sub
    finally:
        sub.close()
        raw.close()
        context.term()


@settings(FUZZ, max_examples=150)
@given(ANY_MESSAGE)
def test_subscriber_counts_what_decode_rejects(
    raw_pair: tuple[zmq.Socket[Any], Subscriber], parts: list[bytes]
) -> None:
    raw, sub = raw_pair
    if not parts:
        return  # zmq has no empty multipart message
    expected = verdict(parts, max_atoms=1000)
    before = sub.stats.malformed
    raw.send_multipart(parts)
    marker = valid_message(7)
    raw.send_multipart(marker)
    got = sub.recv(TIMEOUT)
    assert got is not None
    if isinstance(expected, Frame):
        assert got.step == expected.step and got.n_atoms == expected.n_atoms
        np.testing.assert_array_equal(got.positions, expected.positions)
        got = sub.recv(TIMEOUT)
        assert got is not None
        assert sub.stats.malformed == before
    else:
        assert sub.stats.malformed == before + 1
        # the reason is the decoder's own, not a bug caught by the safety net
        assert not sub.stats.last_error.split(":")[0].endswith(("Error", "Exception"))
    assert got.step == 7  # the marker: the subscriber read on after the bad message


def test_a_garbage_flood_leaves_the_subscriber_working(
    raw_pair: tuple[zmq.Socket[Any], Subscriber],
) -> None:
    raw, sub = raw_pair
    rng = np.random.default_rng(1)
    before = sub.stats.malformed
    start = time.monotonic()
    for i in range(2000):
        parts = [rng.bytes(int(rng.integers(0, 200))) for _ in range(int(rng.integers(1, 8)))]
        if i % 3 == 0:
            parts = [b"t", valid_message(i)[1], *parts]
        raw.send_multipart(parts)
    raw.send_multipart(valid_message(7))
    got = sub.recv(TIMEOUT)
    assert got is not None and got.step == 7
    assert sub.stats.malformed == before + 2000
    assert time.monotonic() - start < 60
