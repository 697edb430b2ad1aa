"""The benchmark suite behind ``trajwatch bench``: find ``benchmarks/``, run, tabulate.

Every ``benchmarks/bench_*.py`` exposes ``run(quick) -> dict``; most also expose
``summary(result) -> list[dict]``, the few figures that matter, each beside its baseline
measured in the same run (one :func:`row` per figure). The runner imports each file by
path, runs it, and gathers the rows into one table and one JSON document with the
machine the numbers came from.

>>> r = row("read, 100 atoms", 9000.0, unit="frames/s", baseline=3000.0,
...         baseline_name="ASE", target=">= 10x ASE", ok=False)
>>> r["ratio"], r["pass"]
(3.0, False)
>>> print(format_table([{"benchmark": "reader", **r}]).splitlines()[2])
reader     read, 100 atoms  frames/s      9,000  ASE 3,000   3.00  >= 10x ASE  FAIL
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "ORDER",
    "BenchmarkRun",
    "Suite",
    "discover",
    "find_benchmarks",
    "format_markdown",
    "format_table",
    "machine_info",
    "row",
    "run_suite",
    "to_json",
]

ORDER = (
    "reader",
    "transport",
    "features",
    "detectors",
    "lstm",
    "e2e",
    "soak",
    "detection",
    "headline",
    "adapters",
    "scale",
)
"""Benchmarks run in this order (cheap and fundamental first); others follow by name."""

Row = dict[str, Any]


def row(
    metric: str,
    trajwatch: float | None,
    *,
    unit: str = "",
    baseline: float | None = None,
    baseline_name: str = "",
    target: str = "",
    ok: bool | None = None,
    note: str = "",
) -> Row:
    """One figure of the table: trajwatch's value, its baseline's, and the target.

    ``ratio`` is trajwatch / baseline (what it means, faster or smaller, the metric
    says); ``pass`` is ``ok`` (None when the figure has no target).
    """
    ratio = None
    if trajwatch is not None and baseline is not None and baseline != 0:
        ratio = trajwatch / baseline
    return {
        "metric": metric,
        "unit": unit,
        "trajwatch": trajwatch,
        "baseline": baseline,
        "baseline_name": baseline_name,
        "ratio": ratio,
        "target": target,
        "pass": ok,
        "note": note,
    }


# -- finding and loading ------------------------------------------------------------------


def find_benchmarks(directory: str | Path | None = None) -> Path:
    """The ``benchmarks/`` directory: ``directory``, else the one beside the package
    source (``src/trajwatch/../../benchmarks``, an editable install of a checkout), else
    ``./benchmarks``. Raises ``FileNotFoundError`` naming where it looked."""
    if directory is not None:
        candidates = [Path(directory)]
    else:
        checkout = Path(__file__).resolve().parents[2]
        candidates = [checkout / "benchmarks", Path.cwd() / "benchmarks"]
    for path in candidates:
        if path.is_dir() and any(path.glob("bench_*.py")):
            return path
    looked = ", ".join(str(p) for p in candidates)
    raise FileNotFoundError(
        f"no benchmarks directory with bench_*.py files (looked in {looked}); run from a "
        "trajwatch checkout (pip install -e .) or pass --dir PATH"
    )


def discover(directory: Path) -> dict[str, Path]:
    """``{name: path}`` of every ``bench_NAME.py`` in ``directory``, in run order."""
    found = {p.stem.removeprefix("bench_"): p for p in directory.glob("bench_*.py")}
    rank = {name: i for i, name in enumerate(ORDER)}
    return {n: found[n] for n in sorted(found, key=lambda n: (rank.get(n, len(ORDER)), n))}


def _load(path: Path) -> ModuleType:
    """Import a benchmark file by path, under its own name, with its folder importable
    (benchmarks reuse each other's functions)."""
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    loaded = sys.modules.get(path.stem)
    if loaded is not None and Path(getattr(loaded, "__file__", "")).resolve() == path.resolve():
        return loaded
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[path.stem]
        raise
    return module


# -- running ------------------------------------------------------------------------------


@dataclass
class BenchmarkRun:
    """One benchmark's outcome: its summary rows, its full result, or the error."""

    name: str
    path: Path
    seconds: float = 0.0
    rows: list[Row] = field(default_factory=list)
    result: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class Suite:
    """A whole run of the suite."""

    quick: bool
    machine: dict[str, Any]
    runs: list[BenchmarkRun] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rows(self) -> list[Row]:
        return [{"benchmark": r.name, **x} for r in self.runs for x in r.rows]

    @property
    def failed(self) -> list[str]:
        """Benchmarks that raised (a missed target is a row's ``pass``, not a failure)."""
        return [r.name for r in self.runs if r.error is not None]


def summarise(module: ModuleType, result: dict[str, Any]) -> list[Row]:
    """The rows of a result: ``module.summary(result)``, else ``result["summary"]``, else
    one row per boolean in ``result["checks"]`` or for ``result["pass"]``."""
    summary = getattr(module, "summary", None)
    if callable(summary):
        return list(summary(result))
    if isinstance(result.get("summary"), list):
        return list(result["summary"])
    checks = result.get("checks")
    if isinstance(checks, dict):
        return [row(str(k), None, target=str(k), ok=bool(v)) for k, v in checks.items()]
    if "pass" in result:
        return [row("all checks", None, target="see JSON", ok=bool(result["pass"]))]
    return [row("(no summary; see the JSON)", None)]


def run_one(name: str, path: Path, quick: bool) -> BenchmarkRun:
    """Import and run one benchmark; an exception is recorded, not raised."""
    outcome = BenchmarkRun(name, path)
    start = time.perf_counter()
    try:
        module = _load(path)
        run = getattr(module, "run", None)
        if not callable(run):
            raise TypeError(f"{path.name} has no run(quick) function")
        result = run(quick)
        if not isinstance(result, dict):
            raise TypeError(f"{path.name}: run() returned {type(result).__name__}, not a dict")
        outcome.result = result
        outcome.rows = summarise(module, result)
    except Exception as error:  # one broken benchmark must not sink the suite
        outcome.error = f"{type(error).__name__}: {error}"
        outcome.result = {"traceback": traceback.format_exc()}
    outcome.seconds = time.perf_counter() - start
    return outcome


def run_suite(
    directory: Path,
    *,
    quick: bool = False,
    only: Sequence[str] = (),
    progress: Callable[[str], None] | None = None,
) -> Suite:
    """Run the benchmarks in ``directory`` (all, or those named in ``only``)."""
    available = discover(directory)
    unknown = [n for n in only if n not in available]
    if unknown:
        raise ValueError(
            f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(available)}"
        )
    chosen = {n: p for n, p in available.items() if not only or n in only}
    suite = Suite(quick=quick, machine=machine_info())
    start = time.perf_counter()
    for i, (name, path) in enumerate(chosen.items(), 1):
        if progress:
            progress(f"[{i}/{len(chosen)}] {name} ...")
        outcome = run_one(name, path, quick)
        suite.runs.append(outcome)
        if progress:
            status = f"ERROR {outcome.error}" if outcome.error else "done"
            progress(f"[{i}/{len(chosen)}] {name}: {status} in {outcome.seconds:.1f} s")
    suite.seconds = time.perf_counter() - start
    suite.machine["load_average_end"] = list(os.getloadavg())
    return suite


# -- machine ------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(distribution: str) -> str | None:
    """An installed distribution's version, without importing it (torch takes seconds)."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """Where and when the numbers were taken: CPU, cores, load, versions, date, commit."""
    from trajwatch import __version__

    names = ("numpy", "numba", "torch", "pyzmq", "river", "ase", "extxyz", "scikit-learn")
    versions = {name: _version(name) for name in names}
    try:
        import zmq

        versions["libzmq"] = zmq.zmq_version()
    except ImportError:
        pass
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "load_average_start": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "trajwatch": __version__,
        "versions": versions,
        "commit": _commit(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


# -- output -------------------------------------------------------------------------------


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    v = float(value)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1 or a == 0:
        return f"{v:.2f}"
    return f"{v:.3g}"


def _verdict(value: Any) -> str:
    return "-" if value is None else ("pass" if value else "FAIL")


COLUMNS = ("benchmark", "metric", "unit", "trajwatch", "baseline", "ratio", "target", "result")


def _cells(r: Row) -> tuple[str, ...]:
    base = "-"
    if r.get("baseline") is not None:
        base = f"{r.get('baseline_name') or 'baseline'} {_number(r['baseline'])}".strip()
    return (
        str(r["benchmark"]),
        str(r["metric"]),
        str(r.get("unit") or ""),
        _number(r.get("trajwatch")),
        base,
        _number(r.get("ratio")),
        str(r.get("target") or "-"),
        _verdict(r.get("pass")),
    )


def format_table(rows: Iterable[Row]) -> str:
    """The one table: benchmark, metric, unit, trajwatch, baseline, ratio, target, result."""
    body = [_cells(r) for r in rows]
    widths = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(COLUMNS)]
    right = {3, 5}

    def line(cells: Sequence[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in pairs).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(COLUMNS), rule, *(line(b) for b in body)])


def format_markdown(rows: Iterable[Row]) -> str:
    """The same table in Markdown (for the README)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [c.replace("|", "\\|") for c in _cells(r)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(suite: Suite) -> str:
    """The table with a header (machine, mode) and a footer (counts, errors)."""
    m = suite.machine
    load = m.get("load_average_start", [math.nan])
    lines = [
        f"trajwatch bench ({'quick' if suite.quick else 'full'}) on {m['cpu']}, "
        f"{m['cores']} cores, load {load[0]:.2f} at start; {m['date']}",
        "ratio = trajwatch / baseline, both measured in this run",
        "",
        format_table(suite.rows),
        "",
    ]
    verdicts = [r["pass"] for r in suite.rows if r.get("pass") is not None]
    lines.append(
        f"{sum(verdicts)} of {len(verdicts)} targets met; {len(suite.runs)} benchmarks in "
        f"{suite.seconds:.0f} s"
    )
    notes = [f"  {r['benchmark']}, {r['metric']}: {r['note']}"
             for r in suite.rows if r.get("note")]  # fmt: skip
    if notes:
        lines += ["notes:", *notes]
    lines += [f"ERROR in {r.name}: {r.error}" for r in suite.runs if r.error]
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    """JSON-able: NumPy scalars and arrays to Python, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    tolist = getattr(value, "tolist", None)  # NumPy scalar or array
    if callable(tolist):
        return _plain(tolist())
    return str(value)


def to_json(suite: Suite) -> str:
    """The suite as strict JSON (no NaN): machine, rows, and every benchmark's result."""
    document = {
        "format": "trajwatch-bench/1",
        "quick": suite.quick,
        "seconds": suite.seconds,
        "machine": suite.machine,
        "rows": suite.rows,
        "benchmarks": {
            r.name: {
                "path": str(r.path),
                "seconds": r.seconds,
                "error": r.error,
                "rows": r.rows,
                "result": r.result,
            }
            for r in suite.runs
        },
    }
    return json.dumps(_plain(document), indent=1, allow_nan=False) + "\n"
