"""Engine overhead of publishing every step: steps/s of a 500-atom run without and with the
trajwatch adapter attached, measured in one run.

Engines: ASE (EMT copper, 500 atoms), OpenMM (Lennard-Jones argon, 500 atoms, CPU platform,
one thread), LAMMPS (the same argon, ``lj/cut``), each skipped when it cannot be loaded;
OpenMM and LAMMPS also publishing every 10th step (``/10``).
The adapter publishes every step to a Publisher on tcp://127.0.0.1 whose frames a
subscriber in another process drains (as a monitor would).

Blocks of steps without and with the adapter are interleaved (the order rotates) and
each figure is the median over the rounds; the ratio is taken per round. This machine is
shared, so the primary figure is the engine process's CPU time per step (all its threads,
which includes ZeroMQ's I/O thread, not the subscriber's process); wall-clock steps/s are
shown too.

Each round also runs two more blocks, to split the extra cost per step:

- ``hook``: the engine's own reporting hook with nothing in it (OpenMM: a reporter asking
  the same ``getState`` and doing nothing; LAMMPS: ``fix external`` calling an empty Python
  callback; ASE: an empty observer). This is the floor no adapter can go under.
- ``adapter``: the trajwatch adapter sending to a target that discards the frame: the
  hook plus the adapter's own work (arrays, unit conversion, the Frame).

``publish`` minus ``adapter`` is the transport: encoding and ZeroMQ (its I/O thread and
the kernel's TCP included).

    python benchmarks/bench_adapters.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

try:
    import trajwatch
except ImportError:  # running from a source checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import trajwatch

from trajwatch.adapters.inprocess import FrameTarget
from trajwatch.streaming import Publisher

N_ATOMS = 500
QUICK_ENGINES = ("ase", "openmm", "lammps")  # every step; the /10 and +F,E variants: full
_DRAIN = """
import sys, zmq
s = zmq.Context().socket(zmq.SUB)
s.setsockopt(zmq.SUBSCRIBE, b"")
s.connect(sys.argv[1])
while True:
    s.recv_multipart()
"""


class Discard:
    """A target that drops every frame: the adapter's cost without the transport."""

    def send(self, frame: Any) -> bool:
        return True


class Engine:
    """One engine run: ``step(n)`` advances it; attach/detach toggle the adapter."""

    name = ""
    detail = ""

    def step(self, n: int) -> None:
        raise NotImplementedError

    def attach(self, publisher: FrameTarget) -> None:
        raise NotImplementedError

    def attach_hook(self) -> None:
        """The engine's reporting hook, empty (undone by :meth:`detach`)."""
        raise NotImplementedError

    def detach(self) -> None:
        raise NotImplementedError


class AseEngine(Engine):
    name = "ASE"
    detail = "EMT Cu fcc 5x5x5, Langevin, 2 fs"

    def __init__(self) -> None:
        from ase import units
        from ase.build import bulk
        from ase.calculators.emt import EMT
        from ase.md.langevin import Langevin

        atoms = bulk("Cu", cubic=True).repeat(5)
        atoms.rattle(0.02, seed=0)
        atoms.calc = EMT()
        rng = np.random.default_rng(0)
        masses = atoms.get_masses()[:, None]
        atoms.set_momenta(rng.normal(size=(len(atoms), 3)) * np.sqrt(masses * units.kB * 300))
        self.dyn = Langevin(
            atoms, 2 * units.fs, temperature_K=300, friction=0.02 / units.fs, fixcm=False, rng=rng
        )
        assert len(atoms) == N_ATOMS

    def step(self, n: int) -> None:
        self.dyn.run(n)

    def attach(self, publisher: FrameTarget) -> None:
        from trajwatch.adapters.ase import AseObserver

        self.dyn.attach(AseObserver(self.dyn, publisher, source="ase"), interval=1)

    def attach_hook(self) -> None:
        self.dyn.attach(_nothing, interval=1)

    def detach(self) -> None:
        self.dyn.observers.clear()


class OpenMMEngine(Engine):
    name = "OpenMM"
    detail = "LJ argon 500, CPU platform 1 thread, LangevinMiddle 4 fs"

    def __init__(self, forces_and_energy: bool = False, every: int = 1) -> None:
        import openmm as mm
        from openmm import app, unit

        cells = 5
        a = 0.526
        basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
        grid = np.array(
            [[i, j, k] for i in range(cells) for j in range(cells) for k in range(cells)]
        )
        positions = ((grid[:, None, :] + basis[None]).reshape(-1, 3) * a)[:N_ATOMS]
        side = cells * a
        system = mm.System()
        system.setDefaultPeriodicBoxVectors(
            mm.Vec3(side, 0, 0), mm.Vec3(0, side, 0), mm.Vec3(0, 0, side)
        )
        lj = mm.NonbondedForce()
        lj.setNonbondedMethod(mm.NonbondedForce.CutoffPeriodic)
        lj.setCutoffDistance(0.85)
        topology = app.Topology()
        chain = topology.addChain()
        argon = app.Element.getBySymbol("Ar")
        for _ in range(N_ATOMS):
            system.addParticle(39.948)
            lj.addParticle(0.0, 0.3405, 0.996)
            topology.addAtom("Ar", argon, topology.addResidue("AR", chain))
        system.addForce(lj)
        integrator = mm.LangevinMiddleIntegrator(80 * unit.kelvin, 2 / unit.picosecond, 0.004)
        self.simulation = app.Simulation(
            topology,
            system,
            integrator,
            mm.Platform.getPlatformByName("CPU"),
            {"Threads": "1"},
        )
        self.simulation.context.setPositions(positions)
        self.simulation.context.setVelocitiesToTemperature(80 * unit.kelvin, 1)
        self.full = forces_and_energy
        self.every = every
        if every > 1:
            self.name = f"OpenMM /{every}"
            self.detail = f"same, publishing every {every} steps"
        if forces_and_energy:
            self.name = "OpenMM +F,E"
            self.detail = "same, reporter also asks forces and energy (an extra evaluation)"

    def step(self, n: int) -> None:
        self.simulation.step(n)

    def attach(self, publisher: FrameTarget) -> None:
        from trajwatch.adapters.openmm import OpenMMReporter

        reporter = OpenMMReporter(
            publisher, self.every, forces=self.full, energy=self.full, source="openmm"
        )
        self.simulation.reporters.append(reporter)

    def attach_hook(self) -> None:
        from trajwatch.adapters.openmm import OpenMMReporter

        # asks OpenMM for exactly what the reporter asks, then does nothing with it
        asks = OpenMMReporter(Discard(), self.every, forces=self.full, energy=self.full)
        self.simulation.reporters.append(_EmptyReporter(asks))

    def detach(self) -> None:
        self.simulation.reporters.clear()


class LammpsEngine(Engine):
    name = "LAMMPS"
    detail = "LJ argon 500 (lj/cut 8 Å), metal units, Langevin + nve, 4 fs"

    def __init__(self, every: int = 1) -> None:
        from trajwatch.adapters.lammps import open_lammps

        self.every = every
        if every > 1:
            self.name = f"LAMMPS /{every}"
            self.detail = f"same, publishing every {every} steps"

        self.lmp = open_lammps()
        self.lmp.commands_string(
            """
            units metal
            boundary p p p
            atom_style atomic
            lattice fcc 5.26
            region box block 0 5 0 5 0 5
            create_box 1 box
            create_atoms 1 box
            mass 1 39.948
            pair_style lj/cut 8.0
            pair_coeff 1 1 0.0103 3.405
            velocity all create 80 12345
            fix 1 all langevin 80 80 0.2 4242
            fix 2 all nve
            timestep 0.004
            """
        )
        self.watcher: Any = None
        self._hook: Any = None

    def step(self, n: int) -> None:
        self.lmp.command(f"run {n}")

    def attach(self, publisher: FrameTarget) -> None:
        from trajwatch.adapters.lammps import LammpsWatcher

        self.watcher = LammpsWatcher(self.lmp, publisher, every=self.every, source="lammps")

    def attach_hook(self) -> None:
        import ctypes

        lmp = self.lmp
        # the callback type LammpsWatcher registers (pointers as ints), with nothing in it
        bigint = ctypes.c_int64 if lmp.extract_setting("bigint") == 8 else ctypes.c_int32
        void_p, c_int = ctypes.c_void_p, ctypes.c_int
        raw = ctypes.CFUNCTYPE(None, void_p, bigint, c_int, void_p, void_p, void_p)(_nothing)
        self._hook = (raw, ctypes.cast(raw, lmp.FIX_EXTERNAL_CALLBACK_FUNC))
        lmp.command(f"fix twhook all external pf/callback {self.every} 1")
        lmp.lib.lammps_set_fix_external_callback(lmp.lmp, b"twhook", self._hook[1], None)

    def detach(self) -> None:
        if self.watcher is not None:
            self.watcher.detach()
            self.watcher = None
        if self._hook is not None:
            self.lmp.command("unfix twhook")
            self._hook = None


def _nothing(*args: Any) -> None:
    """An empty engine hook."""


class _EmptyReporter:
    """An OpenMM reporter that asks what ``asks`` (a reporter) asks, and does nothing."""

    def __init__(self, asks: Any) -> None:
        self.asks = asks

    def describeNextReport(self, simulation: Any) -> dict[str, Any]:  # noqa: N802
        report: dict[str, Any] = self.asks.describeNextReport(simulation)
        return report

    def report(self, simulation: Any, state: Any) -> None:
        pass


MODES = ("off", "hook", "adapter", "publish")


def _measure(engine: Engine, publisher: Publisher, steps: int, rounds: int) -> dict[str, Any]:
    engine.step(max(5, steps // 4))  # warm up: first-call costs, caches
    for mode in MODES[1:]:  # the hooks' and the adapter's own first-call costs
        _attach(engine, mode, publisher)
        engine.step(2)
        engine.detach()
    cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
    wall: dict[str, list[float]] = {mode: [] for mode in MODES}
    ratios_cpu: dict[str, list[float]] = {mode: [] for mode in MODES[1:]}
    ratios_wall: dict[str, list[float]] = {mode: [] for mode in MODES[1:]}
    sent_before = publisher.sent
    for r in range(rounds):
        order = MODES[r % len(MODES) :] + MODES[: r % len(MODES)]  # rotate the order
        if r % 2:
            order = order[::-1]
        results = {}
        for mode in order:
            _attach(engine, mode, publisher)
            c0, w0 = time.process_time(), time.perf_counter()
            engine.step(steps)
            w1 = time.perf_counter()
            c1 = _settle()  # ZeroMQ's I/O thread may still be sending this block's frames
            engine.detach()
            results[mode] = ((c1 - c0) / steps, (w1 - w0) / steps)
            cpu[mode].append(results[mode][0])
            wall[mode].append(results[mode][1])
        for mode in MODES[1:]:
            ratios_cpu[mode].append(results[mode][0] / results["off"][0])
            ratios_wall[mode].append(results[mode][1] / results["off"][1])
    median = statistics.median
    off_cpu = median(cpu["off"])
    with_cpu = median(cpu["publish"])
    ratio = median(ratios_cpu["publish"])
    # the extra CPU µs per step of each layer, from the per-round ratios (robust to drift)
    extra = {mode: (median(ratios_cpu[mode]) - 1) * off_cpu * 1e6 for mode in MODES[1:]}
    split = {
        "engine_hook_us": extra["hook"],
        "adapter_us": extra["adapter"] - extra["hook"],
        "transport_us": extra["publish"] - extra["adapter"],
    }
    return {
        "engine": engine.name,
        "detail": engine.detail,
        "steps_per_block": steps,
        "pairs": rounds,  # rounds of interleaved blocks (the name predates the split)
        "frames_published": publisher.sent - sent_before,
        "publish_every": getattr(engine, "every", 1),
        "cpu_ms_per_step_without": off_cpu * 1e3,
        "cpu_ms_per_step_with": with_cpu * 1e3,
        "steps_per_cpu_s_without": 1 / off_cpu,
        "steps_per_cpu_s_with": 1 / with_cpu,
        "steps_per_s_without": 1 / median(wall["off"]),
        "steps_per_s_with": 1 / median(wall["publish"]),
        "ratio_cpu": ratio,
        "ratio_wall": median(ratios_wall["publish"]),
        "overhead_pct": (ratio - 1) * 100,
        "adapter_us_per_frame": (with_cpu - off_cpu) * 1e6,
        "meets_2pct": ratio <= 1.02,
        # the floor: the engine's empty reporting hook alone, and the adapter with no transport
        "ratio_cpu_hook": median(ratios_cpu["hook"]),
        "ratio_cpu_adapter_discard": median(ratios_cpu["adapter"]),
        "hook_meets_2pct": median(ratios_cpu["hook"]) <= 1.02,
        "steps_per_cpu_s_hook": 1 / (off_cpu * median(ratios_cpu["hook"])),
        "split_us_per_step": split,
    }


def _settle(limit: float = 0.5) -> float:
    """The process CPU time once the other threads are idle (at most ``limit`` s of waiting).

    ZeroMQ's I/O thread sends a block's frames partly after the block's last step; its CPU
    time belongs to that block, not to the next one. Waiting here (main thread asleep,
    so it adds no CPU time) until the rest of the process stops using CPU charges it right.
    """
    deadline = time.perf_counter() + limit
    while True:
        p0, t0 = time.process_time(), time.thread_time()
        time.sleep(0.002)
        others = (time.process_time() - p0) - (time.thread_time() - t0)
        if others < 1e-4 or time.perf_counter() > deadline:
            return time.process_time()


def _attach(engine: Engine, mode: str, publisher: Publisher) -> None:
    if mode == "hook":
        engine.attach_hook()
    elif mode == "adapter":
        engine.attach(Discard())
    elif mode == "publish":
        engine.attach(publisher)


def _engines() -> list[tuple[str, Callable[[], Engine]]]:
    return [
        ("ase", AseEngine),
        ("openmm", OpenMMEngine),
        ("openmm+fe", lambda: OpenMMEngine(forces_and_energy=True)),
        ("lammps", LammpsEngine),
        ("openmm/10", lambda: OpenMMEngine(every=10)),
        ("lammps/10", lambda: LammpsEngine(every=10)),
    ]


def run(quick: bool = False) -> dict[str, Any]:
    """Measure every engine that loads here; returns the figures (see ``main``)."""
    plan = {  # steps per block, rounds (slow engines get fewer steps per block)
        "ase": (6, 3) if quick else (30, 9),
        "openmm": (200, 3) if quick else (1000, 9),
        "openmm+fe": (200, 3) if quick else (1000, 9),
        "lammps": (200, 3) if quick else (1000, 9),
        "openmm/10": (200, 3) if quick else (1000, 9),
        "lammps/10": (200, 3) if quick else (1000, 9),
    }
    results: dict[str, Any] = {"n_atoms": N_ATOMS, "quick": quick, "engines": {}, "skipped": {}}
    with Publisher("tcp://127.0.0.1:*", hwm=10_000) as publisher:
        drain = subprocess.Popen([sys.executable, "-c", _DRAIN, publisher.endpoint])
        try:
            if not publisher.wait_for_subscriber(30.0):
                raise RuntimeError("the draining subscriber did not join")
            for key, make in _engines():
                if quick and key not in QUICK_ENGINES:
                    continue
                try:
                    engine = make()
                except (ImportError, OSError) as error:
                    results["skipped"][key] = f"{type(error).__name__}: {error}"
                    continue
                steps, rounds = plan[key]
                results["engines"][key] = _measure(engine, publisher, steps, rounds)
                results["engines"][key]["dropped"] = publisher.dropped
        finally:
            drain.kill()
            drain.wait()
    results["trajwatch_version"] = trajwatch.__version__
    return results


def summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The suite's rows: steps per CPU second with the adapter, beside the bare engine."""
    from trajwatch.bench import row

    rows = [row(f"{r['engine']} steps, publishing every {r['publish_every']}",
                r["steps_per_cpu_s_with"], unit="steps/CPU s",
                baseline=r["steps_per_cpu_s_without"], baseline_name="engine alone",
                # the issue's target is for publishing every step
                target="<= 2% slower" if r["publish_every"] == 1 else "",
                ok=bool(r["meets_2pct"]) if r["publish_every"] == 1 else None,
                note="median ratio of interleaved rounds")
            for r in results["engines"].values()]  # fmt: skip
    rows += [row(f"{r['engine']} steps, its empty reporting hook only (the floor)",
                 r["steps_per_cpu_s_hook"], unit="steps/CPU s",
                 baseline=r["steps_per_cpu_s_without"], baseline_name="engine alone",
                 note="no adapter can beat this: " + ", ".join(
                     f"{k.removesuffix('_us')} {v:.0f} us" for k, v in
                     r["split_us_per_step"].items()) + " per step")
             for r in results["engines"].values()]  # fmt: skip
    rows += [row(f"{key}: skipped", None, note=why) for key, why in results["skipped"].items()]
    return rows


def print_table(results: dict[str, Any]) -> None:
    print(f"Engine overhead, {results['n_atoms']} atoms, publishing every step")
    header = (
        f"{'engine':<12} {'ms/step off':>11} {'ms/step on':>10} {'steps/s off':>11} "
        f"{'steps/s on':>10} {'ratio cpu':>9} {'ratio wall':>10} {'us/frame':>8} {'<=2%':>5}"
    )
    print(header)
    print("-" * len(header))
    for r in results["engines"].values():
        print(
            f"{r['engine']:<12} {r['cpu_ms_per_step_without']:>11.3f} "
            f"{r['cpu_ms_per_step_with']:>10.3f} {r['steps_per_cpu_s_without']:>11.0f} "
            f"{r['steps_per_cpu_s_with']:>10.0f} {r['ratio_cpu']:>9.3f} "
            f"{r['ratio_wall']:>10.3f} {r['adapter_us_per_frame']:>8.1f} "
            f"{'yes' if r['meets_2pct'] else 'no':>5}"
        )
    for key, why in results["skipped"].items():
        print(f"{key:<12} skipped: {why}")
    print("(ms/step and steps/s: engine process CPU time; ratio: median of interleaved rounds)")
    print()
    print("Extra CPU per step, split (us): the engine's empty hook, the adapter, the transport")
    header = (
        f"{'engine':<12} {'hook ratio':>10} {'hook us':>8} {'adapter us':>10} "
        f"{'transport us':>12} {'hook <=2%':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in results["engines"].values():
        split = r["split_us_per_step"]
        print(
            f"{r['engine']:<12} {r['ratio_cpu_hook']:>10.3f} {split['engine_hook_us']:>8.1f} "
            f"{split['adapter_us']:>10.1f} {split['transport_us']:>12.1f} "
            f"{'yes' if r['hook_meets_2pct'] else 'no':>9}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter blocks, fewer rounds")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    results = run(quick=args.quick)
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
