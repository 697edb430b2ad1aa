"""``trajwatch scan``, one file at a time: stream it through a pipeline, report what it saw.

:func:`scan_file` reads a trajectory frame by frame (never the whole file) into the same
:class:`~trajwatch.pipeline.Pipeline` the live monitor uses, calls the observers before
and the recorders after each frame, and reports progress in bytes of the file on disk
(compressed or not: ``XYZReader.tell()``).
:func:`render_scan_table` is the summary table, one row per file.

>>> import os, tempfile
>>> from trajwatch.simulate import MDSpec, run_md, write_with_ase
>>> from trajwatch.pipeline import Pipeline
>>> path = write_with_ase(run_md(MDSpec(steps=200, repeat=2, fault="clash", fault_frame=170)),
...                     os.path.join(tempfile.mkdtemp(), "cu.extxyz"))
>>> report = scan_file(path, Pipeline())
>>> report.source, report.frames, report.alarms, report.first_alarm.frame, report.worst
('cu', 200, 1, 170, 'critical')
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

from trajwatch.events import Event, severity_rank
from trajwatch.frame import Frame
from trajwatch.monitor.live import FrameObserver
from trajwatch.monitor.render import SEVERITY_STYLE
from trajwatch.pipeline import Pipeline

__all__ = ["FileReport", "Recorder", "render_scan_table", "scan_file"]

Recorder = Callable[[Frame, Any, Sequence[Event]], object]
"""Called after each frame with the frame, its SourceWatch and the events it raised."""


@dataclass
class FileReport:
    """What scanning one file found."""

    path: Path
    source: str = ""
    frames: int = 0
    bad_frames: int = 0
    seconds: float = 0.0
    events: list[Event] = field(default_factory=list)

    @property
    def anomalies(self) -> list[Event]:
        return [e for e in self.events if e.event == "anomaly"]

    @property
    def alarms(self) -> int:
        return len(self.anomalies)

    @property
    def first_alarm(self) -> Event | None:
        anomalies = self.anomalies
        return anomalies[0] if anomalies else None

    @property
    def worst(self) -> str | None:
        severities = [e.severity for e in self.anomalies]
        return max(severities, key=severity_rank) if severities else None


def scan_file(
    path: str | os.PathLike[str],
    pipeline: Pipeline,
    *,
    skip_bad: bool = False,
    observers: Sequence[FrameObserver] = (),
    recorders: Sequence[Recorder] = (),
    progress: Callable[[int, int, int], object] | None = None,
    every: float = 0.1,
) -> FileReport:
    """Run every frame of ``path`` through ``pipeline``.

    ``progress(bytes_read, file_size, frames)`` is called at most every ``every``
    seconds and once at the end.
    """
    from trajwatch.replay.xyz import XYZReader

    report = FileReport(Path(path))
    size = os.path.getsize(path)
    start = time.perf_counter()
    clock = time.monotonic
    next_report = 0.0
    with XYZReader(path, skip_bad=skip_bad) as reader:
        report.source = reader.source
        try:
            for frame in _prefetched(reader, pipeline):
                for observer in observers:
                    observer.observe(frame)
                events = pipeline.process(frame)
                report.events.extend(events)
                if recorders:
                    watch = pipeline.sources[frame.source]
                    for record in recorders:
                        record(frame, watch, events)
                report.frames += 1
                if progress is not None and clock() >= next_report:
                    next_report = clock() + every
                    progress(reader.tell(), size, report.frames)
        finally:
            report.bad_frames = reader.bad_frames
    if progress is not None:
        progress(size, size, report.frames)
    report.seconds = time.perf_counter() - start
    return report


def _prefetched(frames: Iterable[Frame], pipeline: Pipeline, chunk: int = 64) -> Iterator[Frame]:
    """``frames``, handed to :meth:`Pipeline.prefetch` ``chunk`` at a time when that pays
    (the LSTM scores windows in batches)."""
    if not pipeline.batches:
        yield from frames
        return
    it = iter(frames)
    while True:
        batch: list[Frame] = []
        try:
            batch.extend(islice(it, chunk))
        except Exception:  # a bad frame: the good ones before it are judged first
            pipeline.prefetch(batch)
            yield from batch
            raise
        pipeline.prefetch(batch)
        yield from batch
        if len(batch) < chunk:
            return


def render_scan_table(reports: Sequence[FileReport]) -> Table:
    """One row per file (by name, or by path when names repeat): frames, alarms, first
    alarm, worst severity, speed."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    table.add_column("file", overflow="fold", min_width=12)
    for name in ("frames", "bad", "alarms", "first alarm", "onset"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("worst", no_wrap=True)
    table.add_column("frames/s", justify="right", no_wrap=True)
    names = [r.path.name for r in reports]
    unique = len(set(names)) == len(names)  # else the whole paths tell them apart
    for r in reports:
        first = r.first_alarm
        where = "" if first is None else f"frame {first.frame}"
        table.add_row(
            r.path.name if unique else str(r.path),
            f"{r.frames:,}",
            Text(f"{r.bad_frames:,}", "yellow" if r.bad_frames else "dim"),
            Text(f"{r.alarms:,}", "bold red" if r.alarms else "green"),
            where,
            "" if first is None or first.onset_frame is None else str(first.onset_frame),
            Text(r.worst or "", SEVERITY_STYLE.get(r.worst or "", "")),
            f"{r.frames / r.seconds:,.0f}" if r.seconds > 0 else "",
        )
    return table
