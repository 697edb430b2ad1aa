"""``scan`` of many files at once: each file one task, on a process pool or a Dask cluster.

A task runs the very pipeline the serial scan runs (``scan_file`` with the pipeline
``trajwatch.cli`` builds from the same options) on one file, so its events are the serial
run's. What crosses the process boundary is plain data: a task is a JSON-able dict (the
file's path and the scan options) and so is its result (events as dicts, counts, the
feature rows as CSV text); trajwatch pickles nothing of its own (the pool and Dask move
these dicts with their own machinery). :func:`in_file_order` puts results that complete
in any order back in the order of the files, so the gathered event log is the serial one.

Per-file artefacts: the worker writes the ``--plot`` figure and the ``--dump`` files
itself (to the paths given, which a Dask worker on another node must be able to reach);
the ``--features`` rows come back as text and the caller writes them into the one table.

>>> import os, tempfile
>>> from trajwatch.simulate import MDSpec, run_md, write_with_ase
>>> path = write_with_ase(run_md(MDSpec(steps=120, repeat=2, fault="clash", fault_frame=90)),
...                     os.path.join(tempfile.mkdtemp(), "cu.extxyz"))
>>> tasks = [ScanTask(str(path)).to_dict()] * 2
>>> results = [TaskResult.from_dict(r) for _, r in in_file_order(run_pool(tasks, jobs=2))]
>>> [(r.report.source, r.report.frames, [e.frame for e in r.report.events]) for r in results]
[('cu', 120, [90]), ('cu', 120, [90])]
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import io
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import traceback
import uuid
from collections.abc import Generator, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from trajwatch.events import Event
from trajwatch.monitor.scan import FileReport

__all__ = [
    "ScanTask",
    "TaskResult",
    "dask_missing",
    "default_jobs",
    "in_file_order",
    "options_of",
    "run_dask",
    "run_pool",
    "scan_task",
    "warm_up",
]

T = TypeVar("T")

_PATHS = "__paths__"  # options key: the names of the options that were paths


def default_jobs() -> int:
    """The CPUs this process may run on (its affinity mask, else the machine's count).

    >>> default_jobs() >= 1
    True
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def options_of(args: argparse.Namespace) -> dict[str, Any]:
    """The JSON-able part of the command's options, to rebuild them in a worker: paths
    become strings (their names listed under ``"__paths__"``), other values are kept
    when they are JSON scalars or lists of them, the rest (the files, the command
    function) is left out.

    >>> options_of(argparse.Namespace(events=Path("e.jsonl"), jobs=2, command=print))
    {'events': 'e.jsonl', 'jobs': 2, '__paths__': ['events']}
    """
    options: dict[str, Any] = {}
    paths: list[str] = []
    for key, value in vars(args).items():
        if key in ("files", "command"):
            continue
        if isinstance(value, Path):
            options[key] = str(value)
            paths.append(key)
        elif _is_json_scalar(value) or (
            isinstance(value, (list, tuple)) and all(_is_json_scalar(v) for v in value)
        ):
            options[key] = list(value) if isinstance(value, tuple) else value
    options[_PATHS] = paths
    return options


def _is_json_scalar(value: object) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _namespace(options: dict[str, Any]) -> argparse.Namespace:
    values = {k: v for k, v in options.items() if k != _PATHS}
    for key in options.get(_PATHS, ()):
        if values.get(key) is not None:
            values[key] = Path(values[key])
    return argparse.Namespace(**values)


@dataclass(frozen=True)
class ScanTask:
    """One file to scan, and what to make of it besides the events.

    ``plot`` is where the worker writes the figure (``NAME-<source>.png`` with
    ``plot_by_source``, as the serial scan names them when there are several files),
    ``dump`` the directory for the flagged frames (``context`` frames around each),
    ``features`` asks for the feature rows as CSV text. ``options`` are
    :func:`options_of` the command's arguments: what the pipeline is built from.
    ``reference`` is the reference model fitted once by the caller, as the JSON text
    ``--save-reference model.json`` would write (plain data: no shared file needed).
    """

    path: str
    options: dict[str, Any] = field(default_factory=dict)
    skip_bad: bool = False
    features: bool = False
    plot: str | None = None
    plot_by_source: bool = False
    dump: str | None = None
    context: int = 10
    reference: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScanTask:
        return cls(**data)


@dataclass
class TaskResult:
    """What a task sends back: the file's report, feature rows, files written, or an error.

    On an error, ``report`` holds what was found before it (the serial scan would have
    written those events too) and ``error`` the message.
    """

    report: FileReport
    csv: str = ""
    csv_rows: int = 0
    plots: list[str] = field(default_factory=list)
    dumped: list[str] = field(default_factory=list)
    error: str | None = None
    error_type: str = ""

    def to_dict(self) -> dict[str, Any]:
        r = self.report
        return {
            "path": str(r.path),
            "source": r.source,
            "frames": r.frames,
            "bad_frames": r.bad_frames,
            "seconds": r.seconds,
            "events": [e.to_dict() for e in r.events],
            "csv": self.csv,
            "csv_rows": self.csv_rows,
            "plots": self.plots,
            "dumped": self.dumped,
            "error": self.error,
            "error_type": self.error_type,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskResult:
        report = FileReport(
            Path(data["path"]),
            source=data["source"],
            frames=data["frames"],
            bad_frames=data["bad_frames"],
            seconds=data["seconds"],
            events=[Event.from_dict(e) for e in data["events"]],
        )
        return cls(
            report,
            csv=data["csv"],
            csv_rows=data["csv_rows"],
            plots=list(data["plots"]),
            dumped=list(data["dumped"]),
            error=data["error"],
            error_type=data["error_type"],
        )

    def raise_error(self) -> None:
        """Raise the task's error again, in the caller: OSError and ValueError as such
        (the command reports them as one line), anything else with the worker's traceback."""
        if self.error is None:
            return
        if self.error_type == "OSError":
            raise OSError(self.error)
        if self.error_type == "ValueError":
            raise ValueError(self.error)
        raise RuntimeError(f"scanning {self.report.path} failed in a worker:\n{self.error}")


_warm = False


def warm_up() -> None:
    """Compile (or load from Numba's cache) the reader and feature kernels, once per
    process: the pool's initializer, and run on every Dask worker before the first file."""
    global _warm
    if _warm:
        return
    from trajwatch.pipeline import warmup as pipeline_warmup
    from trajwatch.replay.xyz import warmup as reader_warmup

    reader_warmup()  # what the serial scan compiles before its first file
    pipeline_warmup()
    _warm = True


def scan_task(task: dict[str, Any]) -> dict[str, Any]:
    """Scan one file (a :class:`ScanTask` as a dict); its :class:`TaskResult` as a dict.

    This is the function a worker runs. It never raises for a bad file: the error goes
    back in the result, with the events raised before it.
    """
    # The command's own helpers: one place builds the pipeline from the options and
    # names the figures, for the serial scan and for this worker alike.
    from trajwatch.cli import _pipeline, _plot_path
    from trajwatch.monitor.scan import Recorder, scan_file
    from trajwatch.monitor.trace import FeatureCsv, Trace
    from trajwatch.sinks import CallbackSink, FrameDump, Sink

    warm_up()
    spec = ScanTask.from_dict(task)
    events: list[Event] = []
    result = TaskResult(FileReport(Path(spec.path)))
    sinks: list[Sink] = [CallbackSink(events.append)]
    dump = FrameDump(spec.dump, context=spec.context) if spec.dump else None
    if dump is not None:
        sinks.append(dump)
    recorders: list[Recorder] = []
    trace = Trace() if spec.plot else None
    if trace is not None:
        recorders.append(trace.record)
    text = io.StringIO()
    table = FeatureCsv(text) if spec.features else None
    if table is not None:
        recorders.append(lambda frame, watch, raised: table.write(frame, watch))
    try:
        try:
            result.report = scan_file(
                spec.path,
                _pipeline(_task_options(spec), sinks),
                skip_bad=spec.skip_bad,
                observers=[dump] if dump is not None else [],
                recorders=recorders,
            )
        finally:
            result.report.events = events
            if dump is not None:
                dump.close()
                result.dumped = [str(p) for p in dump.written]
        if table is not None:
            table.close()
            result.csv = text.getvalue()
            result.csv_rows = table.rows
        if trace is not None and spec.plot:
            from trajwatch.monitor.plot import save_plot

            for source_trace in trace.sources.values():
                out = _plot_path(Path(spec.plot), result.report.source, spec.plot_by_source)
                save_plot(source_trace, out, title=spec.path)
                result.plots.append(str(out))
    except (OSError, ValueError) as error:
        result.error = str(error)
        result.error_type = "OSError" if isinstance(error, OSError) else "ValueError"
    except Exception:  # a bug: send the whole story back
        result.error = traceback.format_exc()
        result.error_type = "Exception"
    return result.to_dict()


_namespaces: dict[str, argparse.Namespace] = {}  # one per set of options, per process


def _task_options(spec: ScanTask) -> argparse.Namespace:
    """The command's options as the worker uses them, with the caller's reference model
    (kept on local disk) instead of the run to fit it on. The same options give the same
    object in a process, so what the command caches on it (the reference model, the
    LSTM) is loaded once per worker, as the serial scan loads it once per command."""
    key = json.dumps([spec.options, spec.reference], sort_keys=True)
    options = _namespaces.get(key)
    if options is not None:
        return options
    options = _namespace(spec.options)
    if spec.reference is not None:
        directory = Path(tempfile.mkdtemp(prefix="trajwatch-reference-"))
        path = directory / "model.json"
        path.write_text(spec.reference, encoding="utf-8")
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        options.reference = path
        options.save_reference = None  # the caller has saved it, if asked to
    _namespaces[key] = options
    return options


def in_file_order(completed: Iterable[tuple[int, T]]) -> Iterator[tuple[int, T]]:
    """``(index, result)`` pairs that arrive in any order, passed on in index order
    (0, 1, 2, ...) as soon as each one's predecessors are there.

    >>> list(in_file_order([(1, "b"), (2, "c"), (0, "a")]))
    [(0, 'a'), (1, 'b'), (2, 'c')]
    """
    waiting: dict[int, T] = {}
    following = 0
    for index, result in completed:
        waiting[index] = result
        while following in waiting:
            yield following, waiting.pop(following)
            following += 1


def _pool_context() -> Any:
    # forkserver: workers fork from a clean single-threaded server that has imported
    # trajwatch once, never from this process (which may run threads: the progress bar)
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["trajwatch.parallel", "trajwatch.monitor.scan"])
        return context
    return multiprocessing.get_context("spawn")


def run_pool(
    tasks: Sequence[dict[str, Any]], *, jobs: int
) -> Generator[tuple[int, dict[str, Any]], None, None]:
    """Run :func:`scan_task` over ``tasks`` on ``jobs`` processes; ``(index, result)``
    as each completes. Closing the iterator early cancels the tasks not yet started."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, not {jobs}")
    pool = ProcessPoolExecutor(
        max_workers=min(jobs, max(1, len(tasks))),
        mp_context=_pool_context(),
        initializer=warm_up,
    )
    try:
        futures: dict[Future[dict[str, Any]], int] = {
            pool.submit(scan_task, task): index for index, task in enumerate(tasks)
        }
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    result = future.result()
                except BrokenProcessPool as error:
                    path = tasks[futures[future]]["path"]
                    raise OSError(
                        f"a worker process died while scanning {path} (killed, or out of "
                        "memory?); scan it alone with --jobs 1 to see why"
                    ) from error
                yield futures[future], result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def dask_missing() -> str | None:
    """None if Dask's distributed scheduler can be imported, else how to get it."""
    if importlib.util.find_spec("distributed") is None:
        return "--dask needs dask.distributed: pip install 'trajwatch[dask]'"
    return None


def run_dask(
    tasks: Sequence[dict[str, Any]],
    address: str,
    *,
    jobs: int | None = None,
    log_level: int = logging.ERROR,
) -> Generator[tuple[int, dict[str, Any]], None, None]:
    """Run :func:`scan_task` over ``tasks`` on a Dask cluster, each task one future;
    ``(index, result)`` as each completes.

    ``address`` is a scheduler (``tcp://host:8786``), or ``"local"`` for a LocalCluster
    of ``jobs`` single-threaded worker processes on 127.0.0.1. The workers must import
    the same trajwatch and reach the files by the same paths. ``log_level`` is for
    Dask's own loggers here (its INFO lines would bury the scan's output).
    """
    missing = dask_missing()
    if missing:
        raise ValueError(missing)
    from distributed import Client, LocalCluster, as_completed

    logging.getLogger("distributed").setLevel(log_level)  # after the import: it sets its own

    cluster = None
    if address == "local":
        if log_level >= logging.ERROR:
            # our own cluster's worker processes read it (at their import of distributed)
            os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
        cluster = LocalCluster(
            n_workers=jobs or default_jobs(),
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )
        address = cluster.scheduler_address
    try:
        client = Client(address, set_as_default=False, timeout="30s")
    except BaseException:
        if cluster is not None:
            cluster.close()
        raise
    try:
        client.run(warm_up)  # workers that join later warm up at their first task
        batch = uuid.uuid4().hex[:8]
        futures = [
            client.submit(scan_task, task, key=f"trajwatch-scan-{batch}-{index}", pure=False)
            for index, task in enumerate(tasks)
        ]
        index_of = {future.key: index for index, future in enumerate(futures)}
        try:
            for future in as_completed(futures, loop=client.loop):
                index = index_of[future.key]
                try:
                    result = future.result()
                except Exception as error:  # e.g. KilledWorker: its workers kept dying
                    raise OSError(
                        f"Dask could not scan {tasks[index]['path']}: "
                        f"{type(error).__name__}: {error}"
                    ) from error
                yield index, result
        finally:
            client.cancel(futures)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
