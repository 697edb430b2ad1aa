"""Engine adapters against the real engines: ASE (EMT) and OpenMM (CPU), plus the in-process
Watch, the unit tables and the topology helpers. LAMMPS: test_adapters_lammps.py; IMDv3:
test_imd.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trajwatch.adapters.ase import AseObserver, frame_from_atoms
from trajwatch.adapters.inprocess import AlarmStop, Watch
from trajwatch.adapters.topology import numbers_from_file, numbers_from_spec, parse_types
from trajwatch.adapters.units import LAMMPS_STYLES, imd_units, lammps_units
from trajwatch.frame import Frame
from trajwatch.pipeline import PipelineConfig
from trajwatch.sinks import CallbackSink
from trajwatch.streaming import Publisher, Subscriber
from trajwatch.units import ASE_TIME_IN_FS

WARMUP = PipelineConfig().warmup_frames


class Keep:
    """A target that keeps what it is sent."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def send(self, frame: Frame) -> bool:
        self.frames.append(frame)
        return True


# -- ASE ---------------------------------------------------------------------------------


def _cu_dynamics(repeat: int = 3, seed: int = 0) -> Any:
    from ase import units
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.md.langevin import Langevin

    atoms = bulk("Cu", cubic=True).repeat(repeat)
    atoms.rattle(0.02, seed=seed)
    atoms.calc = EMT()
    rng = np.random.default_rng(seed)
    masses = atoms.get_masses()[:, None]
    momenta = rng.normal(size=(len(atoms), 3)) * np.sqrt(masses * units.kB * 300)
    atoms.set_momenta(momenta - masses * momenta.sum(axis=0) / masses.sum())
    return Langevin(
        atoms, 2 * units.fs, temperature_K=300, friction=0.02 / units.fs, fixcm=False, rng=rng
    )


def _clash(atoms: Any, i: int = 0) -> int:
    """Push atom i to 0.9 Å of its nearest neighbour (as trajwatch.simulate does)."""
    vectors = atoms.get_distances(i, range(len(atoms)), mic=True, vector=True)
    lengths = np.linalg.norm(vectors, axis=1)
    lengths[i] = np.inf
    j = int(np.argmin(lengths))
    atoms.positions[i] += vectors[j] * (1 - 0.9 / lengths[j])
    return j


def test_ase_observer_publishes_every_step_in_trajwatch_units(free_endpoint: str) -> None:
    dyn = _cu_dynamics(repeat=2)
    atoms = dyn.atoms
    with (
        Publisher(free_endpoint, topic="cu") as pub,
        Subscriber(free_endpoint) as sub,
    ):
        assert pub.wait_for_subscriber(5.0)
        observer = AseObserver(dyn, pub, source="cu")
        dyn.attach(observer, interval=2)
        dyn.run(6)
        frames = [sub.recv(timeout=5.0) for _ in range(4)]
    assert all(f is not None for f in frames)
    last = frames[-1]
    assert last is not None
    assert [f.step for f in frames if f is not None] == [0, 2, 4, 6]
    assert last.source == "cu" and last.time == pytest.approx(12.0)
    np.testing.assert_allclose(last.positions, atoms.positions)
    np.testing.assert_allclose(last.velocities, atoms.get_velocities() / ASE_TIME_IN_FS)
    np.testing.assert_allclose(last.forces, atoms.get_forces())
    assert last.energy == pytest.approx(atoms.get_potential_energy())
    assert last.numbers.tolist() == [29] * len(atoms) and last.has_cell


def test_frame_from_atoms_does_not_alias_the_live_atoms() -> None:
    dyn = _cu_dynamics(repeat=2)
    frame = frame_from_atoms(dyn.atoms)
    before = frame.positions.copy()
    dyn.run(2)
    np.testing.assert_array_equal(frame.positions, before)


def test_ase_in_process_watch_stops_the_dynamics_on_a_clash(tmp_path: Path) -> None:
    dyn = _cu_dynamics(seed=3)
    atoms = dyn.atoms
    clash_step = WARMUP + 60
    events: list[Any] = []
    watch = Watch(sinks=[CallbackSink(events.append)], dump_dir=tmp_path, keep=8)
    dyn.attach(AseObserver(dyn, watch, source="cu"), interval=1)
    dyn.attach(lambda: _clash(atoms) if dyn.nsteps == clash_step else None, interval=1)
    with pytest.raises(AlarmStop) as stopped:
        dyn.run(clash_step + 100)
    alarm = stopped.value.event
    assert events == [alarm] and alarm.event == "anomaly"
    # the clash happens after the observer sent step clash_step: first seen at the next step
    assert clash_step < alarm.step <= clash_step + 3
    assert dyn.nsteps == alarm.step  # stopped right after the step that raised it
    assert alarm.severity in ("high", "critical") and 0 in alarm.atoms
    # the flagged frame and the frames before it are kept
    from ase.io import read

    assert stopped.value.dump == watch.dumps[0] and watch.dumps[0].exists()
    kept = read(watch.dumps[0], index=":")
    assert len(kept) == 8
    np.testing.assert_allclose(kept[-1].positions, atoms.positions, atol=1e-8)
    assert kept[-1].info["step"] == alarm.step
    np.testing.assert_allclose(kept[-1].get_velocities(), atoms.get_velocities(), atol=1e-8)


def test_ase_without_raising_a_loop_checks_the_flag() -> None:
    dyn = _cu_dynamics(seed=4)
    clash_step = WARMUP + 20
    watch = Watch(stop_on="warning")
    dyn.attach(AseObserver(dyn, watch, raise_on_alarm=False), interval=1)
    dyn.attach(lambda: _clash(dyn.atoms) if dyn.nsteps == clash_step else None, interval=1)
    for _ in dyn.irun(clash_step + 100):
        if watch.stop_requested:
            break
    assert watch.alarm is not None and dyn.nsteps == watch.alarm.step <= clash_step + 3


# -- Watch -------------------------------------------------------------------------------


def test_watch_without_stop_policy_never_stops_but_still_dumps(
    clash_frames: list[Frame], clash_at: int, tmp_path: Path
) -> None:
    forwarded = Keep()
    watch = Watch(stop_on=None, dump_dir=tmp_path / "dumps", keep=5, publish=forwarded)
    for frame in clash_frames:
        watch.send(frame)
    assert not watch.stop_requested and watch.alarm is None
    assert len(forwarded.frames) == watch.frames == len(clash_frames)
    anomalies = [e for e in watch.events if e.event == "anomaly"]
    assert len(anomalies) == len(watch.dumps) == 1
    assert watch.dumps[0].name == f"clash-step{anomalies[0].step}.extxyz"
    from ase.io import read

    kept = read(watch.dumps[0], index=":")
    assert [a.info["step"] for a in kept] == [
        f.step for f in clash_frames[anomalies[0].frame - 4 : anomalies[0].frame + 1]
    ]


def test_watch_stop_and_reset(clash_frames: list[Frame], clash_at: int) -> None:
    with Watch(stop_on="high") as watch:
        sent = 0
        for frame in clash_frames:
            watch.send(frame)
            sent += 1
            if watch.stop_requested:
                break
        assert watch.alarm is not None and clash_at <= watch.alarm.frame == sent - 1
        watch.reset()
        assert not watch.stop_requested and watch.alarm is None


def test_watch_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="stop_on"):
        Watch(stop_on="severe")
    with pytest.raises(ValueError, match="keep"):
        Watch(keep=0)


# -- OpenMM ------------------------------------------------------------------------------


def _argon_simulation(cells: int = 4, seed: int = 0, platform: str = "CPU") -> Any:
    """An fcc argon crystal (4 cells^3 atoms) under Lennard-Jones at 80 K, Langevin."""
    mm = pytest.importorskip("openmm")
    from openmm import app, unit

    a = 0.526  # nm
    basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    grid = np.array([[i, j, k] for i in range(cells) for j in range(cells) for k in range(cells)])
    positions = ((grid[:, None, :] + basis[None, :, :]).reshape(-1, 3)) * a
    side = cells * a
    system = mm.System()
    system.setDefaultPeriodicBoxVectors(
        mm.Vec3(side, 0, 0), mm.Vec3(0, side, 0), mm.Vec3(0, 0, side)
    )
    lj = mm.NonbondedForce()
    lj.setNonbondedMethod(mm.NonbondedForce.CutoffPeriodic)
    lj.setCutoffDistance(min(0.85, 0.49 * side))
    topology = app.Topology()
    chain = topology.addChain()
    argon = app.Element.getBySymbol("Ar")
    for _ in range(len(positions)):
        system.addParticle(39.948)
        lj.addParticle(0.0, 0.3405, 0.996)
        topology.addAtom("Ar", argon, topology.addResidue("AR", chain))
    system.addForce(lj)
    topology.setPeriodicBoxVectors(system.getDefaultPeriodicBoxVectors())
    integrator = mm.LangevinMiddleIntegrator(80 * unit.kelvin, 2 / unit.picosecond, 0.004)
    integrator.setRandomNumberSeed(seed + 1)
    simulation = app.Simulation(
        topology,
        system,
        integrator,
        mm.Platform.getPlatformByName(platform),
        {"Threads": "1"} if platform == "CPU" else {},
    )
    simulation.context.setPositions(positions)
    simulation.context.setVelocitiesToTemperature(80 * unit.kelvin, seed + 1)
    return simulation


def test_openmm_reporter_converts_to_trajwatch_units() -> None:
    from openmm import unit

    from trajwatch.adapters.openmm import OpenMMReporter

    simulation = _argon_simulation(cells=2, platform="Reference")
    keep = Keep()
    simulation.reporters.append(OpenMMReporter(keep, 3, forces=True, energy=True, source="ar"))
    simulation.step(6)
    assert [f.step for f in keep.frames] == [3, 6]
    frame = keep.frames[-1]
    state = simulation.context.getState(
        getPositions=True,
        getVelocities=True,
        getForces=True,
        getEnergy=True,
        enforcePeriodicBox=False,  # the reporter asks for positions as integrated
    )
    np.testing.assert_allclose(
        frame.positions, state.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    )
    np.testing.assert_allclose(
        frame.velocities,
        state.getVelocities(asNumpy=True).value_in_unit(unit.angstrom / unit.femtosecond),
    )
    kj_per_mol_in_ev = 1 / 96.4853321233  # CODATA 2018: 1 eV = 96.485 kJ/mol
    kj_per_mol_nm = unit.kilojoule_per_mole / unit.nanometer
    np.testing.assert_allclose(
        frame.forces,
        state.getForces(asNumpy=True).value_in_unit(kj_per_mol_nm) * kj_per_mol_in_ev / 10,
        rtol=1e-9,
    )
    assert frame.energy == pytest.approx(
        state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) * kj_per_mol_in_ev
    )
    assert frame.time == pytest.approx(6 * 4.0) and frame.source == "ar"
    assert frame.numbers.tolist() == [18] * 32 and frame.has_cell
    np.testing.assert_allclose(np.diag(frame.cell), [10.52] * 3)


class BoxCheck:
    """Keeps each frame with the context's own box and positions at the time it was sent."""

    def __init__(self, simulation: Any, wrapped: bool) -> None:
        self.simulation = simulation
        self.wrapped = wrapped
        self.frames: list[Frame] = []
        self.cells: list[np.ndarray] = []

    def send(self, frame: Frame) -> bool:
        from openmm import unit

        state = self.simulation.context.getState(
            getPositions=True, enforcePeriodicBox=self.wrapped
        )
        box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.angstrom)
        np.testing.assert_allclose(frame.cell, box)
        np.testing.assert_allclose(
            frame.positions, state.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
        )
        self.frames.append(frame)
        self.cells.append(frame.cell.copy())
        return True


@pytest.mark.parametrize("wrap", [False, True])
def test_openmm_reporter_follows_a_barostat_box_and_wraps_on_request(wrap: bool) -> None:
    import openmm as mm
    from openmm import unit

    from trajwatch.adapters.openmm import OpenMMReporter

    simulation = _argon_simulation(cells=2, platform="Reference")
    simulation.system.addForce(mm.MonteCarloBarostat(1000 * unit.bar, 80 * unit.kelvin, 1))
    simulation.context.reinitialize(preserveState=True)
    check = BoxCheck(simulation, wrapped=wrap)
    simulation.reporters.append(OpenMMReporter(check, wrap=wrap))
    simulation.step(40)
    assert len({round(float(c[0, 0]), 9) for c in check.cells}) > 1  # the box did change
    for frame, cell in zip(check.frames, check.cells, strict=True):
        np.testing.assert_array_equal(frame.cell, cell)  # no frame's cell changed later


def test_openmm_reporter_checks_the_numbers() -> None:
    from trajwatch.adapters.openmm import OpenMMReporter

    simulation = _argon_simulation(cells=1, platform="Reference")
    simulation.reporters.append(OpenMMReporter(Keep(), numbers=[18, 18]))
    with pytest.raises(ValueError, match="numbers has 2 entries"):
        simulation.step(1)


def _clash_openmm(simulation: Any) -> None:
    """Atom 0 onto its fcc neighbour 1: 0.22 nm apart instead of 0.37."""
    state = simulation.context.getState(getPositions=True)
    positions = state.getPositions(asNumpy=True)._value.copy()
    d = positions[1] - positions[0]
    positions[0] = positions[1] - d / np.linalg.norm(d) * 0.22
    simulation.context.setPositions(positions)


def test_openmm_clash_is_caught_and_stops_simulation_step() -> None:
    from trajwatch.adapters.openmm import OpenMMReporter

    simulation = _argon_simulation(cells=4, seed=2)
    events: list[Any] = []
    watch = Watch(sinks=[CallbackSink(events.append)])
    simulation.reporters.append(OpenMMReporter(watch, source="ar"))
    fault_step = WARMUP + 60
    simulation.step(fault_step)
    assert events == []
    _clash_openmm(simulation)
    with pytest.raises(AlarmStop) as stopped:
        simulation.step(200)
    alarm = stopped.value.event
    assert fault_step < alarm.step <= fault_step + 3
    assert simulation.currentStep == alarm.step  # stopped cleanly after that step
    assert events == [alarm] and 0 in alarm.atoms
    watch.reset()
    simulation.step(2)  # the context is fine: the run can go on


def _same_frames(a: list[Frame], b: list[Frame]) -> None:
    assert [(f.step, f.time, f.seq) for f in a] == [(f.step, f.time, f.seq) for f in b]
    for x, y in zip(a, b, strict=True):
        for name in ("positions", "velocities", "forces", "cell", "numbers"):
            np.testing.assert_array_equal(getattr(x, name), getattr(y, name))
        assert x.energy == y.energy


def test_openmm_background_reporter_sends_the_frames_of_the_synchronous_one() -> None:
    """Two identical Reference-platform runs: the background thread builds, from each
    report's State, exactly the frames the engine's thread would have built."""
    from trajwatch.adapters.openmm import OpenMMReporter

    runs = []
    for background in (False, True):
        simulation = _argon_simulation(cells=2, platform="Reference")
        keep = Keep()
        reporter = OpenMMReporter(keep, 2, forces=True, energy=True, background=background)
        simulation.reporters.append(reporter)
        simulation.step(30)
        assert reporter.close() and reporter.dropped == 0
        simulation.step(4)  # a report after close starts a new thread
        assert reporter.close()
        runs.append(keep.frames)
    assert len(runs[0]) == 17
    _same_frames(runs[0], runs[1])


def test_openmm_background_reporter_publishes_over_a_socket(free_endpoint: str) -> None:
    from trajwatch.adapters.openmm import OpenMMReporter

    simulation = _argon_simulation(cells=3)
    with (
        Publisher(free_endpoint, lossless=True) as publisher,
        Subscriber(free_endpoint, bind=False, lossless=True) as subscriber,
    ):
        assert publisher.wait_for_subscriber(10.0)
        reporter = OpenMMReporter(publisher, background=True, source="ar")
        simulation.reporters.append(reporter)
        simulation.step(200)
        assert reporter.close(30.0)
        frames = [subscriber.recv(10.0) for _ in range(200)]
    assert [f.step for f in frames if f is not None] == list(range(1, 201))
    assert all(f is not None and f.source == "ar" and f.n_atoms == 108 for f in frames)


def test_openmm_background_clash_stops_simulation_step_a_few_steps_late() -> None:
    from trajwatch.adapters.openmm import OpenMMReporter

    simulation = _argon_simulation(cells=4, seed=2)
    events: list[Any] = []
    watch = Watch(sinks=[CallbackSink(events.append)])
    reporter = OpenMMReporter(watch, source="ar", background=True)
    simulation.reporters.append(reporter)
    fault_step = WARMUP + 60
    simulation.step(fault_step)
    assert reporter.flush(30.0) and events == []
    _clash_openmm(simulation)
    with pytest.raises(AlarmStop) as stopped:
        simulation.step(2000)
    alarm = stopped.value.event
    assert fault_step < alarm.step <= fault_step + 3  # the flagged frame is the early one
    assert alarm.step <= simulation.currentStep < fault_step + 2000  # the run stopped
    assert reporter.close(30.0)
    assert events[0] == alarm and 0 in alarm.atoms


class Slow:
    """A target that takes a while per frame; ``lossless`` as a Publisher has it."""

    def __init__(self, lossless: bool, delay: float = 0.002) -> None:
        self.lossless = lossless
        self.delay = delay
        self.steps: list[int] = []

    def send(self, frame: Frame) -> bool:
        import time

        time.sleep(self.delay)
        self.steps.append(frame.step)
        return True


def _tiny(step: int) -> Frame:
    return Frame(np.zeros((1, 3)), [18], step=step)


@pytest.mark.parametrize("lossless", [False, True])
def test_background_sender_drops_only_for_a_target_that_may_drop(lossless: bool) -> None:
    from trajwatch.adapters.background import BackgroundSender

    target = Slow(lossless)
    sender = BackgroundSender(target, _tiny, max_pending=4)
    queued = [sender.put(step) for step in range(40)]
    assert sender.close(30.0)
    if lossless:  # the engine waited for room: every frame, in order
        assert all(queued) and target.steps == list(range(40)) and sender.dropped == 0
    else:  # never waits: a full queue drops the new frame, counted
        assert sender.dropped == queued.count(False) > 0
        assert target.steps == [s for s, ok in zip(range(40), queued, strict=True) if ok]
    assert sender.sent == len(target.steps) and sender.pending == 0


def test_background_sender_passes_its_error_to_the_engine_thread() -> None:
    from trajwatch.adapters.background import BackgroundSender

    def build(step: int) -> Frame:
        if step == 3:
            raise ValueError("bad snapshot")
        return _tiny(step)

    keep = Keep()
    sender = BackgroundSender(keep, build)
    for step in range(4):
        sender.put(step)
    with pytest.raises(RuntimeError, match="stopped") as failed:
        sender.flush(10.0)
    assert isinstance(failed.value.__cause__, ValueError)
    with pytest.raises(RuntimeError):
        sender.put(4)
    assert [f.step for f in keep.frames] == [0, 1, 2]


# -- units and topology ------------------------------------------------------------------


@pytest.mark.parametrize("style", sorted(LAMMPS_STYLES))
def test_lammps_unit_styles_agree_with_ase(style: str) -> None:
    from ase import units
    from ase.calculators.lammps.unitconvert import convert

    ours = lammps_units(style)
    ase_time_in_fs = 1 / units.fs
    expected = {
        "length": convert(1.0, "distance", style, "ASE"),
        "time": convert(1.0, "time", style, "ASE") * ase_time_in_fs,
        "velocity": convert(1.0, "velocity", style, "ASE") / ase_time_in_fs,
        "force": convert(1.0, "force", style, "ASE"),
        "energy": convert(1.0, "energy", style, "ASE"),
        "mass": convert(1.0, "mass", style, "ASE"),
    }
    for name, value in expected.items():
        assert getattr(ours, name) == pytest.approx(value, rel=1e-6), name


def test_unit_profiles() -> None:
    assert lammps_units("real").velocity == 1.0 and lammps_units("metal").energy == 1.0
    lj = lammps_units("lj", lj=(3.405, 0.0103, 39.948))
    # τ = σ sqrt(m/ε) ≈ 2.16 ps for argon; forces in ε/σ
    assert lj.time == pytest.approx(2158.8, rel=1e-4)
    assert lj.force == pytest.approx(0.0103 / 3.405)
    namd, gromacs = imd_units("namd"), imd_units("gromacs")
    assert namd.energy / gromacs.energy == pytest.approx(4.184)
    assert gromacs.velocity == pytest.approx(1e-3) and gromacs.time == pytest.approx(1e3)
    with pytest.raises(ValueError, match="sigma"):
        lammps_units("lj")
    with pytest.raises(ValueError, match="lammps:metal"):
        imd_units("lammps")
    with pytest.raises(ValueError, match="unknown IMD engine"):
        imd_units("amber")


def test_numbers_from_spec_and_types() -> None:
    assert numbers_from_spec("Ar*3").tolist() == [18, 18, 18]
    assert numbers_from_spec("(O,H,H)*2").tolist() == [8, 1, 1, 8, 1, 1]
    assert numbers_from_spec("cu,Ag*2").tolist() == [29, 47, 47]
    assert numbers_from_spec("(Cu,Ag)*2,O").tolist() == [29, 47, 29, 47, 8]
    assert parse_types("1=Ar,2=O") == {1: "Ar", 2: "O"}
    for bad in ("", "Xx*2", "Ar*two", "(O,H", "Ar;Kr", "Ar*2*3"):
        with pytest.raises(ValueError):
            numbers_from_spec(bad)
    with pytest.raises(ValueError, match="TYPE=Element"):
        parse_types("Ar")


def test_numbers_from_topology_files(tmp_path: Path) -> None:
    xyz = tmp_path / "w.xyz"
    xyz.write_text("3\nwater\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n3\n\nO 0 0 0\n")
    assert numbers_from_file(xyz).tolist() == [8, 1, 1]
    pdb = tmp_path / "w.pdb"
    pdb.write_text(
        "ATOM      1  OW  SOL     1       0.000   0.000   0.000  1.00  0.00           O\n"
        "ATOM      2  HW1 SOL     1       0.960   0.000   0.000  1.00  0.00           H\n"
        "HETATM    3 CA   CA      2       5.000   0.000   0.000  1.00  0.00          CA\n"
        "ATOM      4  C1  LIG     3       1.000   1.000   1.000  1.00  0.00\n"
        "END\n"
    )
    assert numbers_from_file(pdb).tolist() == [8, 1, 20, 6]
    data = tmp_path / "ar.data"
    data.write_text(
        "LAMMPS data file\n\n3 atoms\n2 atom types\n\n0 10 xlo xhi\n0 10 ylo yhi\n"
        "0 10 zlo zhi\n\nMasses\n\n1 39.948\n2 15.999\n\nAtoms # atomic\n\n"
        "2 2 1.0 1.0 1.0\n1 1 0.0 0.0 0.0\n3 1 2.0 2.0 2.0\n"
    )
    assert numbers_from_file(data).tolist() == [18, 8, 18]  # by atom ID, not line order
    assert numbers_from_file(data, {1: "Kr", 2: "O"}).tolist() == [36, 8, 36]
    with pytest.raises(ValueError, match="cannot read atomic numbers"):
        numbers_from_file(tmp_path / "conf.gro")
    coarse = tmp_path / "cg.data"
    coarse.write_text(data.read_text().replace("15.999", "72.0"))
    with pytest.raises(ValueError, match="matches no element"):
        numbers_from_file(coarse)
