"""Per-frame records of a scan: the trace behind ``--plot`` and the ``--features`` CSV.

:class:`Trace` keeps, per source, the fused score and the plotted quantities of every
frame (a few floats per frame) and the events; :class:`FeatureCsv` streams the whole
feature vector of every frame to a CSV file as it goes, so it holds nothing in memory.

>>> import io
>>> from trajwatch.simulate import MDSpec, run_md
>>> from trajwatch.pipeline import Pipeline
>>> pipeline, trace, out = Pipeline(), Trace(), io.StringIO()
>>> csv = FeatureCsv(out)
>>> for frame in run_md(MDSpec(steps=4, repeat=2, source="cu")):
...     events = pipeline.process(frame)
...     watch = pipeline.sources[frame.source]
...     trace.record(frame, watch, events)
...     csv.write(frame, watch)
>>> trace.sources["cu"].frames.tolist(), csv.rows
([0, 1, 2, 3], 4)
>>> header = out.getvalue().splitlines()[0].split(",")
>>> header[:5], tuple(header[5:]) == pipeline.sources["cu"].engine.names
(['frame', 'step', 'time', 'source', 'score'], True)
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from trajwatch.events import Event
from trajwatch.frame import Frame
from trajwatch.monitor.probe import QUANTITIES, Probe

__all__ = ["CSV_COLUMNS", "FeatureCsv", "SourceTrace", "Trace"]

CSV_COLUMNS = ("frame", "step", "time", "source", "score")
"""The columns before the features in the CSV."""


@dataclass
class SourceTrace:
    """Everything plotted for one source (arrays indexed by frame)."""

    source: str
    threshold: float
    feature_names: tuple[str, ...]
    _frames: list[int] = field(default_factory=list)
    _times: list[float] = field(default_factory=list)
    _score: list[float] = field(default_factory=list)
    _values: list[tuple[float, ...]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    @property
    def frames(self) -> NDArray[np.int64]:
        return np.asarray(self._frames, dtype=np.int64)

    @property
    def times(self) -> NDArray[np.float64]:
        """Simulation time of each frame, fs (NaN where the file has none)."""
        return np.asarray(self._times, dtype=np.float64)

    @property
    def score(self) -> NDArray[np.float64]:
        return np.asarray(self._score, dtype=np.float64)

    def quantity(self, key: str) -> NDArray[np.float64]:
        """The per-frame values of one of :data:`~trajwatch.monitor.probe.QUANTITIES`."""
        column = [q.key for q in QUANTITIES].index(key)
        return np.asarray([v[column] for v in self._values], dtype=np.float64).reshape(-1)


class Trace:
    """Collects a :class:`SourceTrace` per source, frame by frame."""

    def __init__(self) -> None:
        self.sources: dict[str, SourceTrace] = {}
        self._probes: dict[str, Probe] = {}

    def record(self, frame: Frame, watch: Any, events: Sequence[Event]) -> None:
        """Note a frame after the pipeline processed it (``watch`` is its SourceWatch)."""
        probe = self._probes.get(frame.source)
        if probe is None:
            probe = self._probes[frame.source] = Probe(watch)
        reading = probe.read(watch)
        trace = self.sources.get(frame.source)
        if trace is None:
            trace = self.sources[frame.source] = SourceTrace(
                frame.source, reading.threshold, probe.feature_names
            )
        trace._frames.append(watch.frames - 1)
        trace._times.append(math.nan if frame.time is None else frame.time)
        trace._score.append(reading.score)
        trace._values.append(reading.values)
        trace.events.extend(events)


class FeatureCsv:
    """One CSV row per frame: frame, step, time, source, score, then every feature.

    ``path_or_file`` is a path (the file is created) or an open text stream. NaN is
    written as ``nan``, which pandas and numpy read back as NaN.
    """

    def __init__(self, path_or_file: str | Path | IO[str]) -> None:
        if isinstance(path_or_file, (str, Path)):
            self._file: IO[str] = open(path_or_file, "w", encoding="utf-8", newline="")  # noqa: SIM115
            self._owns = True
        else:
            self._file = path_or_file
            self._owns = False
        self._writer = csv.writer(self._file)
        self.names: tuple[str, ...] | None = None
        self.rows = 0

    def write(self, frame: Frame, watch: Any) -> None:
        """Append the row of a frame the pipeline has just processed."""
        if self.names is None:
            self.names = tuple(watch.engine.names)
            self._writer.writerow([*CSV_COLUMNS, *self.names])
        time = "" if frame.time is None else repr(frame.time)
        features = watch.last_features.tolist()
        self._writer.writerow(
            [watch.frames - 1, frame.step, time, frame.source, repr(float(watch.last_score))]
            + [repr(v) for v in features]
        )
        self.rows += 1

    def close(self) -> None:
        if self._owns:
            self._file.close()
        else:
            self._file.flush()
