"""Detection quality on a labelled fault suite made from real ASE EMT molecular dynamics.

Every fault is made by changing the running simulation (see :mod:`trajwatch.simulate`):
timestep blow-up, thermostat runaway, slow heating to melting, an atom pushed into a
neighbour, a huge velocity kick, the potential swapped for a wrong one, frozen frames,
NaN frames and a slowly degrading force field, on several metals and temperatures, plus
clean runs. Trajectories are generated once and cached as ``.npz`` under
``$TRAJWATCH_BENCH_CACHE`` (default ``~/.cache/trajwatch-bench``); a change to
``simulate.py`` invalidates the cache.

Three systems see the same feature vectors (the pipeline's feature engine, per run):

* ``trajwatch``: the default :class:`~trajwatch.pipeline.Pipeline` (self-baseline);
* ``river-hst``: River's ``HalfSpaceTrees`` (min-max scaled) under ``QuantileFilter``;
* ``z>3``: a plain Welford |z| > 3 rule on any feature.

Scoring: an alarm (anomaly or drift event for trajwatch; the first frame of each run of
flagged frames for the baselines) is a true positive when it is the first alarm at or
after the fault frame of a faulty run; every other alarm is a false positive. Delay is
the first true alarm's frame minus the fault frame. False alarms are counted per 10,000
clean frames (the clean runs plus the frames before each fault).

Run ``python benchmarks/bench_detection.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from trajwatch import simulate
from trajwatch.frame import Frame
from trajwatch.simulate import ABRUPT_FAULTS, FAULTS, GRADUAL_FAULTS, MDSpec, run_md

CACHE = Path(os.environ.get("TRAJWATCH_BENCH_CACHE", Path.home() / ".cache" / "trajwatch-bench"))


@dataclass(frozen=True)
class Case:
    """One labelled run: ``fault`` is None for a clean run."""

    spec: MDSpec

    @property
    def fault(self) -> str | None:
        return self.spec.fault

    @property
    def name(self) -> str:
        s = self.spec
        return f"{s.element}-{int(s.temperature)}K-{s.fault or 'clean'}-{s.seed}"


def suite(quick: bool) -> list[Case]:
    """The labelled runs: every fault on every metal and temperature, plus clean runs."""
    if quick:
        metals, temperatures, repeat, steps, clean_steps = ("Cu",), (300.0,), 2, 400, 1500
    else:
        metals, temperatures, repeat, steps = ("Cu", "Al", "Ni"), (300.0, 700.0), 3, 600
        clean_steps = 2000
    fault_frame = steps // 2
    cases = []
    seed = 100
    for element in metals:
        for temperature in temperatures:
            base = MDSpec(element=element, temperature=temperature, repeat=repeat)
            cases.append(Case(replace(base, steps=clean_steps, seed=seed, source="clean")))
            seed += 1
            for fault in FAULTS:
                spec = replace(base, steps=steps, fault=fault, fault_frame=fault_frame, seed=seed)
                cases.append(Case(replace(spec, source=fault)))
                seed += 1
    return cases


def _simulator_version() -> str:
    return hashlib.sha256(Path(simulate.__file__).read_bytes()).hexdigest()[:12]


def _cache_path(case: Case) -> Path:
    key = hashlib.sha256(
        json.dumps(asdict(case.spec), sort_keys=True).encode() + _simulator_version().encode()
    ).hexdigest()[:16]
    return CACHE / f"{case.name}-{key}.npz"


def frames_of(case: Case) -> list[Frame]:
    """The run's frames, from the cache or made (and cached) now."""
    path = _cache_path(case)
    if not path.exists():
        frames = list(run_md(case.spec))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(
            tmp,
            positions=np.stack([f.positions for f in frames]),
            velocities=np.stack([_or_nan(f.velocities, f.n_atoms) for f in frames]),
            forces=np.stack([_or_nan(f.forces, f.n_atoms) for f in frames]).astype(np.float32),
            energy=np.array([math.nan if f.energy is None else f.energy for f in frames]),
            numbers=frames[0].numbers,
            cell=frames[0].cell if frames[0].cell is not None else np.zeros((3, 3)),
            pbc=frames[0].pbc,
            step=np.array([f.step for f in frames]),
            time=np.array([f.time for f in frames], dtype=np.float64),
        )
        tmp.replace(path)
    return list(_load(path, case.spec.source or case.name))


def _or_nan(array: np.ndarray | None, n: int) -> np.ndarray:
    return np.full((n, 3), math.nan) if array is None else array


def _load(path: Path, source: str) -> Iterator[Frame]:
    with np.load(path, allow_pickle=False) as data:
        d = {k: data[k] for k in data.files}
    cell = d["cell"] if np.abs(d["cell"]).sum() > 0 else None
    for i in range(d["positions"].shape[0]):
        yield Frame(
            d["positions"][i],
            d["numbers"],
            velocities=d["velocities"][i],
            forces=d["forces"][i].astype(np.float64),
            energy=float(d["energy"][i]),
            cell=cell,
            pbc=d["pbc"] if cell is not None else None,
            step=int(d["step"][i]),
            time=float(d["time"][i]),
            seq=i,
            source=source,
        )


def generate(quick: bool) -> None:
    """Make (and cache) every trajectory of the suite."""
    cases = suite(quick)
    for n, case in enumerate(cases, 1):
        fresh = not _cache_path(case).exists()
        start = time.perf_counter()
        frames_of(case)
        if fresh:
            print(
                f"[{n}/{len(cases)}] {case.name}: {case.spec.steps} frames "
                f"in {time.perf_counter() - start:.0f} s",
                file=sys.stderr,
                flush=True,
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one metal, small runs")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results here")
    parser.add_argument("--generate-only", action="store_true", help="only fill the cache")
    args = parser.parse_args(argv)
    if args.generate_only:
        generate(args.quick)
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
