"""Wire protocol v1: encode/decode round trips and every way a message can be bad."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from trajwatch.frame import Frame
from trajwatch.streaming import ProtocolError, decode, encode
from trajwatch.streaming import protocol as proto

FLOATS = st.floats(-1e6, 1e6, allow_nan=False, width=64)


@st.composite
def frames(draw: st.DrawFn, max_atoms: int = 500) -> Frame:
    n = draw(st.integers(0, max_atoms))
    arr = hnp.arrays(np.float64, (n, 3), elements=st.floats(-1e4, 1e4, width=64))
    positions = draw(arr)
    numbers = draw(hnp.arrays(np.int32, (n,), elements=st.integers(0, 118)))
    has_cell = draw(st.booleans())
    return Frame(
        positions,
        numbers,
        velocities=draw(st.none() | arr),
        forces=draw(st.none() | arr),
        energy=draw(st.none() | FLOATS),
        cell=draw(hnp.arrays(np.float64, (3, 3), elements=FLOATS)) if has_cell else None,
        pbc=draw(st.lists(st.booleans(), min_size=3, max_size=3)),
        step=draw(st.integers(-(2**63), 2**63 - 1)),
        time=draw(st.none() | FLOATS),
        seq=draw(st.integers(0, 2**64 - 1)),
        source=draw(st.text(max_size=20)),
    )


def as_bytes(parts: list[Any]) -> list[bytes]:
    return [bytes(memoryview(p)) for p in parts]


def assert_same(got: Frame, want: Frame, wire: type = np.float64) -> None:
    def on_wire(a: np.ndarray) -> np.ndarray:
        return a.astype(wire).astype(np.float64)

    np.testing.assert_array_equal(got.positions, on_wire(want.positions))
    np.testing.assert_array_equal(got.numbers, want.numbers)
    for name in ("velocities", "forces"):
        a, b = getattr(got, name), getattr(want, name)
        assert (a is None) == (b is None), name
        if b is not None:
            np.testing.assert_array_equal(a, on_wire(b))
    assert got.energy == want.energy
    assert got.time == want.time
    assert (got.step, got.seq, got.source) == (want.step, want.seq, want.source)
    if want.cell is None:
        assert got.cell is None
    else:
        np.testing.assert_array_equal(got.cell, want.cell)
    np.testing.assert_array_equal(got.pbc, want.pbc)


def assert_owned(frame: Frame) -> None:
    """The frame's arrays are its own, never views; the cell read-only (frames share it)."""
    for name in ("positions", "numbers", "velocities", "forces", "cell"):
        a = getattr(frame, name)
        if a is not None:
            assert a.flags.owndata and a.flags.c_contiguous, name
            assert a.flags.writeable == (name != "cell"), name
            assert a.base is None, name
    assert frame.positions.dtype == np.float64 and frame.numbers.dtype == np.int32


# -- round trips ---------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames(), st.sampled_from([np.float64, np.float32]))
def test_round_trip(frame: Frame, wire: type) -> None:
    parts = encode(frame, dtype=wire)
    assert len(parts) == 4 + (frame.velocities is not None) + (frame.forces is not None)
    assert len(parts[1]) == proto.HEADER_SIZE == 136
    back = decode(as_bytes(parts))
    assert_same(back, frame, wire)
    assert_owned(back)
    # the parts as encode returned them (arrays, not bytes) decode the same
    assert_same(decode(parts), frame, wire)


def test_encode_is_zero_copy_for_native_float64() -> None:
    frame = Frame(np.ones((4, 3)), [1, 2, 3, 4], velocities=np.zeros((4, 3)))
    parts = encode(frame)
    assert parts[2] is frame.positions
    assert parts[3] is frame.numbers
    assert parts[4] is frame.velocities
    # float32 on the wire needs a converted copy, of course
    parts32 = encode(frame, dtype=np.float32)
    assert parts32[2].dtype == np.dtype("<f4") and parts32[2].shape == (4, 3)


@pytest.mark.parametrize(
    "make",
    [
        lambda a: a.astype(">f8"),  # big-endian
        lambda a: np.asfortranarray(a),  # not C-contiguous
        lambda a: np.repeat(a, 2, axis=0)[::2],  # strided view
        lambda a: a.astype(np.float32),  # another float dtype
    ],
    ids=["big-endian", "fortran", "strided", "float32"],
)
def test_encode_normalises_foreign_arrays(make: Callable[[np.ndarray], np.ndarray]) -> None:
    rng = np.random.default_rng(1)
    ref = Frame(rng.normal(size=(7, 3)), np.arange(1, 8), forces=rng.normal(size=(7, 3)))
    odd = Frame(ref.positions, ref.numbers, forces=ref.forces)
    # bypass the constructor's normalisation: a producer may hand such arrays over
    odd.positions = make(ref.positions)
    odd.forces = make(ref.forces)
    odd.numbers = ref.numbers.astype(">i4")
    wire = np.float32 if odd.positions.dtype == np.float32 else np.float64
    back = decode(as_bytes(encode(odd, dtype=wire)))
    assert_same(back, Frame(odd.positions, odd.numbers, forces=odd.forces), wire)
    if wire is np.float64:
        np.testing.assert_array_equal(back.positions, ref.positions)


def test_wall_time_travels_as_sent_ns() -> None:
    frame = Frame(np.zeros((1, 3)), [1], wall_time=1_700_000_000.25)
    header = encode(frame)[1]
    # float seconds since the epoch resolve ~0.2 µs: far below any latency we measure
    assert abs(struct.unpack_from("<Q", header, 128)[0] - 1_700_000_000_250_000_000) < 1000
    assert decode(as_bytes(encode(frame))).wall_time == pytest.approx(1_700_000_000.25, abs=1e-6)
    assert decode(as_bytes(encode(frame, sent_ns=5 * 10**9))).wall_time == 5.0
    # unknown is 0 on the wire and None in the Frame, never a fake time
    assert decode(as_bytes(encode(Frame(np.zeros((1, 3)), [1])))).wall_time is None
    assert decode(as_bytes(encode(frame, sent_ns=0))).wall_time is None


def test_decoded_frame_does_not_alias_the_buffers() -> None:
    frame = Frame(np.arange(30.0).reshape(10, 3), np.full(10, 6))
    parts = [bytearray(p) for p in as_bytes(encode(frame))]
    back = decode(parts)
    parts[2][:] = bytes(len(parts[2]))  # scribble over the "receive buffer"
    parts[3][:] = bytes(len(parts[3]))
    np.testing.assert_array_equal(back.positions, frame.positions)
    np.testing.assert_array_equal(back.numbers, frame.numbers)
    assert not np.shares_memory(back.positions, np.frombuffer(parts[2]))
    assert_owned(back)


def test_header_layout_matches_docs() -> None:
    """Offsets documented in docs/protocol.md, checked byte by byte."""
    frame = Frame(
        np.zeros((3, 3)),
        [1, 1, 8],
        energy=-2.5,
        cell=np.diag([10.0, 11.0, 12.0]),
        pbc=[True, False, True],
        step=-7,
        time=1.25,
        velocities=np.zeros((3, 3)),
    )
    header = encode(
        frame, seq=2**40 + 3, stream_id=0xDEADBEEF, dtype=np.float32, sent_ns=2**62 + 9
    )[1]
    assert len(header) == 136
    assert header[0:4] == b"TRJW"
    assert header[4] == 1  # version
    assert header[5] == 2  # dtype code: float32
    flags = struct.unpack_from("<H", header, 6)[0]
    assert (
        flags
        == proto.FLAG_VELOCITIES | proto.FLAG_ENERGY | proto.FLAG_CELL | proto.FLAG_TIME
        == 0x1D
    )
    assert struct.unpack_from("<I", header, 8)[0] == 3  # n_atoms
    assert struct.unpack_from("<I", header, 12)[0] == 0xDEADBEEF  # stream_id
    assert struct.unpack_from("<Q", header, 16)[0] == 2**40 + 3  # seq
    assert struct.unpack_from("<q", header, 24)[0] == -7  # step
    assert struct.unpack_from("<d", header, 32)[0] == 1.25  # time
    assert struct.unpack_from("<d", header, 40)[0] == -2.5  # energy
    assert struct.unpack_from("<9d", header, 48) == (10.0, 0, 0, 0, 11.0, 0, 0, 0, 12.0)
    assert header[120] == 0b101  # pbc bits
    assert header[121:128] == bytes(7)
    assert struct.unpack_from("<Q", header, 128)[0] == 2**62 + 9  # sent_ns


def test_hand_built_message_decodes() -> None:
    """The non-Python producer example of docs/protocol.md, byte for byte."""
    header = (
        bytes.fromhex(
            "54524A57"
            "01"
            "01"
            "1400"
            "03000000"
            "00000000"
            "0500000000000000"
            "6400000000000000"
            "0000000000004940"
            "0000000000408FC0"
        )
        + bytes(72)
        + bytes(8)
        + bytes.fromhex("00E40B5402000000")
    )
    assert header == struct.pack(
        "<4sBBHIIQqdd9dB7xQ",
        b"TRJW", 1, 1, 0x14, 3, 0, 5, 100, 50.0, -1000.0, *[0.0] * 9, 0, 10**10,
    )  # fmt: skip
    positions = struct.pack("<9d", 0, 0, 0, 0.96, 0, 0, -0.24, 0.93, 0)
    numbers = bytes.fromhex("080000000100000001000000")
    frame = decode([b"h2o", header, positions, numbers])
    assert (frame.source, frame.seq, frame.step, frame.energy, frame.time) == (
        "h2o",
        5,
        100,
        -1000.0,
        50.0,
    )
    assert frame.numbers.tolist() == [8, 1, 1]
    assert frame.wall_time == 10.0  # sent_ns 10^10
    assert frame.cell is None and not frame.pbc.any() and frame.velocities is None
    assert frame.positions[2].tolist() == [-0.24, 0.93, 0.0]


# -- malformed messages --------------------------------------------------------------


def good_parts() -> list[bytes]:
    frame = Frame(
        np.ones((4, 3)),
        [1, 6, 7, 8],
        velocities=np.zeros((4, 3)),
        energy=1.0,
        cell=np.eye(3),
        time=2.0,
    )
    return as_bytes(encode(frame, topic="src", seq=3))


def patch(parts: list[bytes], offset: int, fmt: str, *values: Any) -> list[bytes]:
    header = bytearray(parts[1])
    struct.pack_into(fmt, header, offset, *values)
    return [parts[0], bytes(header), *parts[2:]]


MALFORMED: dict[str, tuple[Callable[[list[bytes]], list[Any]], str]] = {
    "one part": (lambda p: p[:1], "1 parts"),
    "three parts": (lambda p: p[:3], "3 parts"),
    "empty header": (lambda p: [p[0], b"", *p[2:]], "header has 0 bytes"),
    "truncated header": (lambda p: [p[0], p[1][:100], *p[2:]], "header has 100 bytes"),
    "long header": (lambda p: [p[0], p[1] + b"\0", *p[2:]], "header has 137 bytes"),
    "wrong magic": (lambda p: patch(p, 0, "4s", b"XXXX"), "magic"),
    "wrong version": (lambda p: patch(p, 4, "B", 2), "version 2"),
    "dtype code": (lambda p: patch(p, 5, "B", 9), "dtype code 9"),
    "unknown flag": (lambda p: patch(p, 6, "<H", 0x1D | 0x100), "unknown flag"),
    "pbc bits": (lambda p: patch(p, 120, "B", 0x10), "pbc"),
    "reserved": (lambda p: patch(p, 124, "B", 1), "reserved"),
    "nan cell": (lambda p: patch(p, 48 + 8 * 4, "<d", float("nan")), "cell"),
    "inf cell": (lambda p: patch(p, 48, "<d", float("inf")), "cell"),
    "inf time": (lambda p: patch(p, 32, "<d", float("inf")), "time"),
    "absurd n_atoms": (lambda p: patch(p, 8, "<I", 2**32 - 1), "exceeds the limit"),
    "n_atoms mismatch": (lambda p: patch(p, 8, "<I", 5), "bytes, expected"),
    "short positions": (lambda p: [*p[:2], p[2][:-8], *p[3:]], "positions has 88"),
    "long positions": (lambda p: [*p[:2], p[2] + b"\0" * 8, *p[3:]], "positions has 104"),
    "short numbers": (lambda p: [*p[:3], p[3][:-1], *p[4:]], "numbers has 15"),
    "short velocities": (lambda p: [*p[:4], p[4][:-1]], "velocities has 95"),
    "missing velocities": (lambda p: p[:4], "announce 5"),
    "extra part": (lambda p: [*p, b"more"], "announce 5"),
    "flag without part": (lambda p: patch(p, 6, "<H", 0x1F), "announce 6"),
    "float32 sizes": (lambda p: patch(p, 5, "B", 2), "expected 48"),
    "bad utf-8 topic": (lambda p: [b"\xff\xfe", *p[1:]], "UTF-8"),
    "negative number": (lambda p: [*p[:3], struct.pack("<4i", 1, -1, 1, 1), p[4]], "-1"),
    "number 200": (lambda p: [*p[:3], struct.pack("<4i", 1, 200, 1, 1), p[4]], "200"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_is_rejected_with_a_reason(case: str) -> None:
    mutate, reason = MALFORMED[case]
    with pytest.raises(ProtocolError, match=None) as info:
        decode(mutate(good_parts()))
    assert reason in str(info.value), str(info.value)
    assert isinstance(info.value, ValueError)


def test_good_parts_are_good() -> None:
    frame = decode(good_parts())
    assert frame.seq == 3 and frame.source == "src" and frame.velocities is not None


def test_limits_are_checked_before_allocating() -> None:
    parts = good_parts()
    with pytest.raises(ProtocolError, match="n_atoms 4 exceeds the limit of 3"):
        decode(parts, max_atoms=3)
    with pytest.raises(ProtocolError, match="exceeds the limit of 200"):
        decode(parts, max_bytes=200)
    # a header announcing 10 million atoms with float64 velocities is 0.76 GB: allowed by
    # default, but the sizes are compared before anything is allocated
    huge = patch(parts, 8, "<I", 10_000_000)
    with pytest.raises(ProtocolError, match="numbers has 16 bytes, expected 40000000"):
        decode(huge)
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        decode(patch(parts, 8, "<I", 10_000_001))


def test_non_finite_physics_is_carried_not_rejected() -> None:
    """NaN positions or energy are a symptom to detect, not a protocol error."""
    frame = Frame(np.full((2, 3), np.nan), [1, 1], energy=float("nan"))
    back = decode(as_bytes(encode(frame)))
    assert np.isnan(back.positions).all() and back.energy is not None
    assert np.isnan(back.energy)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_random_bytes_only_ever_raise_protocol_error(parts: list[bytes]) -> None:
    with contextlib.suppress(ProtocolError):
        decode(parts)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_flipped_header_bytes_only_ever_raise_protocol_error(data: st.DataObject) -> None:
    parts = good_parts()
    header = bytearray(parts[1])
    for _ in range(data.draw(st.integers(1, 4))):
        header[data.draw(st.integers(0, 127))] = data.draw(st.integers(0, 255))
    try:
        frame = decode([parts[0], bytes(header), *parts[2:]])
    except ProtocolError:
        return
    assert frame.n_atoms == 4


def test_encode_rejects_what_it_cannot_send() -> None:
    frame = Frame(np.zeros((1, 3)), [1])
    with pytest.raises(ValueError, match="float64 or float32"):
        encode(frame, dtype=np.int32)
    with pytest.raises(ValueError, match="cannot encode"):
        encode(frame, seq=-1)
    with pytest.raises(ValueError, match="cannot encode"):
        encode(frame, stream_id=2**32)


@pytest.mark.parametrize(
    ("endpoint", "local"),
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://127.0.0.2:*", True),
        ("tcp://localhost:5555", True),
        ("tcp://[::1]:5555", True),
        ("tcp://lo:5555", True),
        ("ipc:///tmp/trajwatch.sock", True),
        ("inproc://x", True),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://*:5555", False),
        ("tcp://[::]:5555", False),
        ("tcp://192.168.1.4:5555", False),
        ("tcp://eth0:5555", False),
        ("epgm://eth0;239.192.1.1:5555", False),
        ("127.0.0.1:5555", False),
    ],
)
def test_is_local_endpoint(endpoint: str, local: bool) -> None:
    assert proto.is_local_endpoint(endpoint) is local


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames(max_atoms=20), st.sampled_from([np.float64, np.float32]))
def test_trusted_frame_path_equals_the_constructor(frame: Frame, wire: type) -> None:
    """decode wraps its arrays without Frame()'s checks; the result must be what Frame() makes."""
    parts = as_bytes(encode(frame, dtype=wire))
    header = proto.parse_header(parts[1])
    arrays = [proto.floats_from(memoryview(p), header, "x") for p in parts[4:]]
    velocities = arrays.pop(0) if frame.velocities is not None else None
    forces = arrays.pop(0) if frame.forces is not None else None
    args = (
        header,
        frame.source,
        proto.floats_from(memoryview(parts[2]), header, "positions"),
        proto.numbers_from(memoryview(parts[3]), frame.n_atoms),
        velocities,
        forces,
    )
    fast = proto.make_frame(*args)
    slow = Frame(
        args[2],
        args[3],
        velocities=velocities,
        forces=forces,
        energy=header.energy,
        cell=header.cell,
        pbc=header.pbc_array(),
        step=header.step,
        time=header.time,
        seq=header.seq,
        source=frame.source,
    )
    for name in Frame.__slots__:
        a, b = getattr(fast, name), getattr(slow, name)
        if isinstance(b, np.ndarray):
            assert isinstance(a, np.ndarray), name
            assert (a.dtype, a.shape) == (b.dtype, b.shape), name
            assert a.flags.c_contiguous and a.flags.owndata and a.base is None, name
            np.testing.assert_array_equal(a, b, err_msg=name)
        else:
            assert type(a) is type(b) and a == b, name
    assert repr(fast) == repr(slow)


def test_huge_but_finite_cell_is_accepted() -> None:
    """The fast finite check (sum of the entries) must not reject an overflowing sum."""
    frame = Frame(np.zeros((1, 3)), [1], cell=np.full((3, 3), 1e308))
    back = decode(as_bytes(encode(frame)))
    assert back.cell is not None and (back.cell == 1e308).all()


def test_frames_with_one_cell_share_one_read_only_array() -> None:
    """A cell seldom changes, so decoding it again would copy the same nine numbers every
    frame: frames whose header carries the cell of the previous one share its array."""
    positions = np.zeros((2, 3))
    box = np.diag([10.0, 11.0, 12.0])
    a, b, c, d = (
        decode(encode(Frame(positions, [1, 8], cell=cell, step=k)))
        for k, cell in enumerate((box, box, box * 1.5, box))
    )
    assert a.cell is not None and b.cell is a.cell and not a.cell.flags.writeable
    np.testing.assert_array_equal(a.cell, box)
    assert c.cell is not None and c.cell is not a.cell
    np.testing.assert_array_equal(c.cell, box * 1.5)
    assert d.cell is not None and d.cell is not c.cell
    np.testing.assert_array_equal(d.cell, box)
    with pytest.raises(ValueError, match="read-only"):
        a.cell[0, 0] = 1.0
