"""The pipeline: frames in, events out, with state kept per source.

``scan`` (files), ``monitor`` (sockets) and the Python API all call :meth:`Pipeline.process`,
so a file gives the same events however its frames arrive.

>>> from trajwatch.simulate import MDSpec, run_md
>>> pipeline = Pipeline()
>>> events = [e for f in run_md(MDSpec(steps=120, repeat=2, fault="clash", fault_frame=90))
...           for e in pipeline.process(f)]
>>> [(e.event, e.frame, e.severity) for e in events]
[('anomaly', 90, 'critical')]
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from trajwatch.detectors.hysteresis import Hysteresis
from trajwatch.detectors.zscore import ZScore
from trajwatch.events import SEVERITIES, Event, FeatureDeviation
from trajwatch.features.catalogue import FEATURES
from trajwatch.features.engine import FeatureEngine
from trajwatch.frame import Frame
from trajwatch.sinks import Sink

__all__ = ["Pipeline", "PipelineConfig", "RunSummary", "SourceWatch", "run"]


@dataclass(frozen=True)
class PipelineConfig:
    """Knobs of the default detector stack (see ``docs/detection.md``)."""

    window: int = 50
    warmup_frames: int = 50
    """Frames learned from the start of each source before any alarm can be raised."""
    threshold: float = 8.0
    """Score (z) above which an alarm starts."""
    release: float = 4.0
    """Score at or below which a frame counts as normal again."""
    release_frames: int = 10
    """Consecutive normal frames that end an alarm (and emit ``recovered``)."""
    top_features: int = 3
    top_atoms: int = 5
    unscored: tuple[str, ...] = (
        "disp_max",
        "min_interatomic_dist",
        "rdf_first_peak_pos",
        "rdf_first_peak_height",
    )
    """Features the z-score leaves out. Window extremes are step functions (flat while the
    extreme frame stays in the window, then a jump) that a running z-score mistakes for
    faults; ``step_disp_max`` and ``step_min_dist`` carry the same signal at once. The
    first RDF peak sharpens and shifts for many frames while a crystal started on its
    lattice warms up, a real drift that a z-score without a drift model calls a fault."""


class SourceWatch:
    """Everything trajwatch keeps about one source: features, detector and alarm state."""

    detector_name = "zscore"

    def __init__(self, source: str, config: PipelineConfig) -> None:
        self.source = source
        self.config = config
        self.engine = FeatureEngine(window=config.window, top_atoms=config.top_atoms)
        self._scored = np.array([name not in config.unscored for name in self.engine.names])
        self._scored_names = tuple(n for n in self.engine.names if n not in config.unscored)
        self._per_frame = np.array([FEATURES[n].kind == "frame" for n in self._scored_names])
        self.detector = ZScore()
        self.alarm = Hysteresis(config.threshold, config.release, config.release_frames)
        self.frames = 0
        self.learned = 0
        self._scores = np.zeros(config.window)
        self.last_features: NDArray[np.float64] = np.full(len(self.engine.names), math.nan)
        self.last_score = 0.0

    def process(self, frame: Frame) -> list[Event]:
        index = self.frames
        self.frames += 1
        features = self.engine.update(frame)
        self.last_features = features
        if self.engine.structure_change is not None:
            return [self._structure_changed(frame, index, self.engine.structure_change)]
        x = features[self._scored]
        warming_up = self.learned < self.config.warmup_frames
        score = 0.0 if warming_up else self.detector.score_one(x)
        self.last_score = score
        self._scores[index % self._scores.size] = score
        events: list[Event] = []
        if not warming_up:
            change = self.alarm.update(score)
            if change == "start":
                events.append(self._anomaly(frame, index, x, score))
            elif change == "end":
                events.append(self._event("recovered", frame, index, score, "warning"))
        if not self.alarm.active and score <= self.config.threshold:
            self.detector.learn_one(x)
            self.learned += 1
        return events

    def _structure_changed(self, frame: Frame, index: int, what: str) -> Event:
        """Atoms appeared, vanished or changed element: the run broke; start afresh."""
        self.detector = ZScore()
        config = self.config
        self.alarm = Hysteresis(config.threshold, config.release, config.release_frames)
        self.learned = 0
        return Event(
            "anomaly",
            frame=index,
            step=frame.step,
            time=frame.time,
            source=self.source,
            detector="structure",
            score=math.inf,
            threshold=0.0,
            severity=SEVERITIES[2],
            onset_frame=index,
            message=what,
        )

    def _onset(self, index: int) -> int:
        """First frame of the run of above-release scores that ends at ``index``."""
        onset = index
        lookback = min(index, self._scores.size - 1)
        for back in range(1, lookback + 1):
            if not self._scores[(index - back) % self._scores.size] > self.config.release:
                break
            onset = index - back
        return onset

    def _severity(self, score: float) -> str:
        ratio = score / self.config.threshold
        return SEVERITIES[2] if ratio >= 4 else SEVERITIES[1] if ratio >= 2 else SEVERITIES[0]

    def _anomaly(self, frame: Frame, index: int, x: NDArray[np.float64], score: float) -> Event:
        z = self.detector.deviations(x)
        size = np.nan_to_num(np.abs(z), nan=-1.0, posinf=np.inf)
        # Per-frame features past the threshold say what happened in this frame; window
        # statistics summarise it (and their z can be far larger: they barely vary when
        # all is well), so they come after.
        urgent = self._per_frame & (size > self.config.threshold)
        order = np.lexsort((-size, ~urgent))
        features = [
            FeatureDeviation(self._scored_names[k], float(x[k]), float(z[k]))
            for k in order[: self.config.top_features]
            if np.isfinite(z[k]) or not np.isfinite(x[k])
        ]
        attribution = self.engine.attribution()
        atoms = [int(a) for a in attribution.moved_most]
        for a in attribution.closest_pair:
            if a >= 0 and a not in atoms:
                atoms.append(a)
        return Event(
            "anomaly",
            frame=index,
            step=frame.step,
            time=frame.time,
            source=self.source,
            detector=self.detector_name,
            score=score,
            threshold=self.config.threshold,
            severity=self._severity(score),
            onset_frame=self._onset(index),
            features=features,
            atoms=atoms,
            message=_describe(features),
        )

    def _event(self, kind: str, frame: Frame, index: int, score: float, severity: str) -> Event:
        return Event(
            kind,
            frame=index,
            step=frame.step,
            time=frame.time,
            source=self.source,
            detector=self.detector_name,
            score=score,
            threshold=self.config.threshold,
            severity=severity,
        )


def _describe(features: Sequence[FeatureDeviation]) -> str:
    return ", ".join(f"{f.name}={f.value:.4g} ({f.deviation:+.1f} sd)" for f in features)


class Pipeline:
    """Routes each frame to its source's :class:`SourceWatch`; hands events to the sinks."""

    def __init__(self, config: PipelineConfig | None = None, sinks: Sequence[Sink] = ()) -> None:
        self.config = config or PipelineConfig()
        self.sinks = list(sinks)
        self.sources: dict[str, SourceWatch] = {}
        self.events: list[Event] = []

    def process(self, frame: Frame) -> list[Event]:
        watch = self.sources.get(frame.source)
        if watch is None:
            watch = self.sources[frame.source] = SourceWatch(frame.source, self.config)
        events = watch.process(frame)
        for event in events:
            self.events.append(event)
            for sink in self.sinks:
                sink.emit(event)
        return events


@dataclass
class RunSummary:
    """What a run through :func:`run` saw."""

    frames: int = 0
    seconds: float = 0.0
    events: list[Event] = field(default_factory=list)

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else math.inf


def run(frames: Iterable[Frame], pipeline: Pipeline) -> RunSummary:
    """Feed every frame through ``pipeline``; returns counts and the events raised."""
    summary = RunSummary()
    start = time.perf_counter()
    for frame in frames:
        summary.events.extend(pipeline.process(frame))
        summary.frames += 1
    summary.seconds = time.perf_counter() - start
    return summary
