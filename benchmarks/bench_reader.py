"""Benchmark of trajwatch's streaming extxyz reader against ASE and the ``extxyz`` package.

Generates real EMT molecular dynamics (ASE, Langevin, Cu) into a temporary directory, writes
it with ASE's extxyz writer (positions, momenta, forces, energy; what most extxyz files
in the wild look like), and measures in one run, interleaved so that a busy machine
slows every reader alike:

* frames/s of ``trajwatch.replay.iread``, ``ase.io.iread`` and ``extxyz.iread_dicts``
  (its C parser) over the same 100-atom and 1000-atom files, best of several rounds;
* the time to the first frame of a ~100 MB file: warm (kernels loaded, the usual case
  for a long-running monitor) and cold (a fresh interpreter, import and Numba cache load
  included), with ASE's time to its first frame of the same file for comparison.

Usage::

    PYTHONPATH=src python benchmarks/bench_reader.py [--quick] [--json results.json]

``run(quick)`` returns the same numbers as a dict (for ``trajwatch bench``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from trajwatch.replay import XYZReader, iread, warmup  # noqa: E402

__all__ = ["main", "run"]


def generate_md(path: Path, repeat: tuple[int, int, int], frames: int, seed: int) -> Path:
    """Write ``frames`` consecutive frames of a real EMT Langevin run of fcc Cu."""
    from ase import units
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write
    from ase.md.langevin import Langevin

    rng = np.random.default_rng(seed)
    atoms = bulk("Cu", "fcc", cubic=True).repeat(repeat)
    atoms.rattle(0.05, seed=seed)
    atoms.calc = EMT()
    masses = atoms.get_masses()[:, None]
    atoms.set_momenta(rng.normal(size=(len(atoms), 3)) * np.sqrt(masses * units.kB * 600.0))
    dyn = Langevin(
        atoms, 2 * units.fs, temperature_K=300, friction=0.02 / units.fs, fixcm=False, rng=rng
    )
    dyn.run(5)
    images = []
    for step in range(frames):
        dyn.run(1)
        image = atoms.copy()
        image.calc = SinglePointCalculator(
            image, energy=atoms.get_potential_energy(), forces=atoms.get_forces()
        )
        image.info["step"] = step
        image.info["time"] = 2.0 * step
        images.append(image)
    write(path, images, format="extxyz")
    return path


CACHE = Path(os.environ.get("TRAJWATCH_BENCH_CACHE", Path.home() / ".cache" / "trajwatch-bench"))


def cached_md(repeat: tuple[int, int, int], frames: int, seed: int) -> Path:
    """:func:`generate_md` once, kept under ``CACHE`` (the MD is most of a quick run)."""
    path = CACHE / f"reader-cu{'x'.join(map(str, repeat))}-{frames}-{seed}.extxyz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = generate_md(path.with_suffix(".tmp.extxyz"), repeat, frames, seed)
        tmp.replace(path)
    return path


def tile(source: Path, target: Path, copies: int = 0, min_bytes: int = 0) -> Path:
    """Concatenate ``source`` ``copies`` times, or until the file has ``min_bytes``."""
    data = source.read_bytes()
    n = copies or -(-min_bytes // len(data))
    with open(target, "wb") as f:
        for _ in range(n):
            f.write(data)
    return target


def count_trajwatch(path: Path) -> int:
    return sum(1 for _ in iread(path))


def count_ase(path: Path) -> int:
    import ase.io

    return sum(1 for _ in ase.io.iread(path, format="extxyz"))


def count_extxyz(path: Path) -> int:
    import extxyz

    return sum(1 for _ in extxyz.iread_dicts(str(path)))


def best_rates(
    path: Path, readers: dict[str, Callable[[Path], int]], rounds: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Frames/s of each reader over the whole file, best of ``rounds``, taking turns.

    Returns rates by process CPU time (robust on a shared machine, where a long pass is
    more likely to be preempted than a short one) and by wall-clock time.
    """
    cpu = {name: 0.0 for name in readers}
    wall = {name: 0.0 for name in readers}
    for _ in range(rounds):
        for name, reader in readers.items():
            t, c = time.perf_counter(), time.process_time()
            n = reader(path)
            wall[name] = max(wall[name], n / (time.perf_counter() - t))
            cpu[name] = max(cpu[name], n / max(time.process_time() - c, 1e-9))
    return cpu, wall


def first_frame_ms(path: Path, repeats: int) -> float:
    """Median time to open ``path`` and get its first frame, kernels already loaded."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        with XYZReader(path) as reader:
            next(reader)
            times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


_COLD = """
import sys, time
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[1])
from trajwatch.replay import iread
t1 = time.perf_counter()
next(iread(sys.argv[2]))
t2 = time.perf_counter()
print((t1 - t0) * 1e3, (t2 - t1) * 1e3)
"""


def first_frame_cold_ms(path: Path) -> tuple[float, float]:
    """(import ms, first-frame ms) in a fresh interpreter (Numba cache load included)."""
    out = subprocess.run(
        [sys.executable, "-c", _COLD, str(SRC), str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout.split()
    return float(out[0]), float(out[1])


def first_frame_ase_ms(path: Path) -> float:
    import ase.io

    t = time.perf_counter()
    next(ase.io.iread(path, format="extxyz"))
    return (time.perf_counter() - t) * 1e3


def check_agreement(path: Path) -> None:
    """The readers being timed read the same numbers (a benchmark of wrong answers is void)."""
    import ase.io
    import extxyz

    mine = next(iread(path))
    atoms = next(ase.io.iread(path, format="extxyz"))
    theirs = next(extxyz.iread_dicts(str(path)))
    assert np.array_equal(mine.positions, atoms.positions)
    assert np.array_equal(mine.positions, theirs.arrays["pos"])
    assert mine.forces is not None and np.array_equal(mine.forces, theirs.arrays["forces"])
    assert mine.energy == atoms.get_potential_energy()


def _environment() -> dict[str, Any]:
    import ase
    import extxyz
    import numba

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "ase": ase.__version__,
        "extxyz": getattr(extxyz, "__version__", "?"),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()),
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Run the benchmark; returns frames/s, ratios and first-frame times as a dict."""
    warmup()
    results: dict[str, Any] = {"quick": quick, "environment": _environment(), "throughput": []}
    # (atoms, repeat, MD frames, copies of the MD file in the timed file)
    sizes = [
        (100, (5, 5, 1), 50 if quick else 200, 4 if quick else 5),
        (1000, (5, 5, 10), 10 if quick else 50, 4),
    ]
    rounds = 3 if quick else 5  # the same for every reader, taking turns
    readers = {"trajwatch": count_trajwatch, "extxyz": count_extxyz, "ase": count_ase}
    with tempfile.TemporaryDirectory(prefix="trajwatch-bench-") as tmp:
        tmpdir = Path(tmp)
        for n_atoms, repeat, md_frames, copies in sizes:
            md = cached_md(repeat, md_frames, seed=n_atoms)
            path = tile(md, tmpdir / f"cu{n_atoms}.extxyz", copies=copies)
            check_agreement(path)
            rates, wall = best_rates(path, readers, rounds)
            results["throughput"].append(
                {
                    "atoms": n_atoms,
                    "frames": md_frames * copies,
                    "file_mb": path.stat().st_size / 1e6,
                    "fps": rates,
                    "vs_ase": rates["trajwatch"] / rates["ase"],
                    "vs_extxyz": rates["trajwatch"] / rates["extxyz"],
                    "fps_wall": wall,
                    "vs_ase_wall": wall["trajwatch"] / wall["ase"],
                    "vs_extxyz_wall": wall["trajwatch"] / wall["extxyz"],
                }
            )
        big = tile(tmpdir / "cu1000.extxyz", tmpdir / "big.extxyz", min_bytes=100_000_000)
        import_ms, cold_ms = first_frame_cold_ms(big)
        results["first_frame"] = {
            "file_mb": big.stat().st_size / 1e6,
            "warm_ms": first_frame_ms(big, repeats=5 if quick else 21),
            "cold_process_ms": cold_ms,
            "cold_import_ms": import_ms,
            "ase_ms": first_frame_ase_ms(big),
        }
        if not quick:
            packed = tmpdir / "big.extxyz.gz"
            with open(big, "rb") as src, gzip.open(packed, "wb", compresslevel=1) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            results["first_frame"]["gzip_warm_ms"] = first_frame_ms(packed, repeats=21)
    return results


def summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The suite's rows: frames/s against ASE and extxyz, time to the first frame."""
    from trajwatch.bench import row

    rows = []
    for r in results["throughput"]:
        fps, n = r["fps"], r["atoms"]
        rows.append(row(f"read, {n} atoms (CPU)", fps["trajwatch"], unit="frames/s",
                        baseline=fps["ase"], baseline_name="ASE", target=">= 10x ASE",
                        ok=r["vs_ase"] >= 10))  # fmt: skip
        rows.append(row(f"read, {n} atoms (CPU)", fps["trajwatch"], unit="frames/s",
                        baseline=fps["extxyz"], baseline_name="extxyz",
                        target=">= 1x extxyz", ok=r["vs_extxyz"] >= 1.0))  # fmt: skip
    first = results["first_frame"]
    rows.append(row(f"first frame, {first['file_mb']:.0f} MB file (warm)", first["warm_ms"],
                    unit="ms", baseline=first["ase_ms"], baseline_name="ASE",
                    target="< 5 ms", ok=first["warm_ms"] < 5.0))  # fmt: skip
    return rows


def format_table(results: dict[str, Any]) -> str:
    lines = [
        "trajwatch streaming extxyz reader (ASE-written EMT MD: positions, momenta, forces)",
        "frames/s by process CPU time, best of the rounds; wall-clock ratios in brackets",
        "",
        f"{'atoms':>6} {'frames':>7} {'MB':>6} {'trajwatch fps':>14} {'extxyz fps':>11} "
        f"{'ASE fps':>9} {'vs ASE':>7} {'vs extxyz':>10}",
    ]
    for row in results["throughput"]:
        fps = row["fps"]
        lines.append(
            f"{row['atoms']:>6} {row['frames']:>7} {row['file_mb']:>6.1f} "
            f"{fps['trajwatch']:>14.0f} {fps['extxyz']:>11.0f} {fps['ase']:>9.0f} "
            f"{row['vs_ase']:>6.1f}x {row['vs_extxyz']:>9.2f}x"
            f"   [{row['vs_ase_wall']:.1f}x, {row['vs_extxyz_wall']:.2f}x]"
        )
    first = results["first_frame"]
    gz = first.get("gzip_warm_ms")
    lines += [
        "",
        f"first frame of a {first['file_mb']:.0f} MB file: {first['warm_ms']:.2f} ms warm"
        + (f" ({gz:.2f} ms gzipped)" if gz is not None else "")
        + f", {first['cold_process_ms']:.0f} ms in a fresh process (+{first['cold_import_ms']:.0f}"
        f" ms import); ASE: {first['ase_ms']:.0f} ms",
        f"load average during the run: {results['environment']['load_average']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames and rounds")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    args = parser.parse_args(argv)
    results = run(quick=args.quick)
    print(format_table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
