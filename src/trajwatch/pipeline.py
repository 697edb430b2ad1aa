"""The pipeline: frames in, events out, with state kept per source.

``scan`` (files), ``monitor`` (sockets) and the Python API all call :meth:`Pipeline.process`,
so a file gives the same events however its frames arrive. Each source gets its own
:class:`~trajwatch.features.engine.FeatureEngine` and
:class:`~trajwatch.detectors.stack.DetectorStack`: a fresh one that learns normal from
the start of the run (self-baseline), or a copy of a model fitted on a trusted run
(reference mode, :func:`fit_reference`).

>>> from trajwatch.simulate import MDSpec, run_md
>>> pipeline = Pipeline()
>>> events = [e for f in run_md(MDSpec(steps=200, repeat=2, fault="clash", fault_frame=170))
...           for e in pipeline.process(f)]
>>> [(e.event, e.frame, e.severity) for e in events]
[('anomaly', 170, 'critical')]
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from trajwatch.detectors import evidence
from trajwatch.detectors.drift import Change
from trajwatch.detectors.stack import DetectorStack, StackConfig
from trajwatch.detectors.state import load, save
from trajwatch.events import Event, FeatureDeviation
from trajwatch.features.engine import FeatureEngine
from trajwatch.frame import Frame
from trajwatch.sinks import Sink

__all__ = [
    "Pipeline",
    "PipelineConfig",
    "RunSummary",
    "SourceWatch",
    "fit_reference",
    "load_reference",
    "run",
    "save_reference",
]


@dataclass(frozen=True)
class PipelineConfig(StackConfig):
    """The detector stack's knobs (:class:`StackConfig`) plus the feature engine's and
    the evidence's (see ``docs/detection.md``)."""

    window: int = 50
    """Frames in the feature engine's window statistics."""
    top_features: int = 3
    top_atoms: int = 5
    unscored: tuple[str, ...] = ("disp_max", "min_interatomic_dist")
    """Features the detectors leave out. Window extremes are step functions (flat while
    the extreme frame stays in the window, then a jump) that a running detector mistakes
    for faults; ``step_disp_max`` and ``step_min_dist`` carry the same signal at once.
    Ignored when the engine has no per-frame counterpart (it then scores everything)."""
    drift_on: str = "frame"
    """Features drift detection watches: ``frame`` (per-frame observables such as the
    kinetic temperature, energy, forces; all features if the engine has none) or
    ``all``."""

    def stack_config(self, names: Sequence[str] | None = None) -> StackConfig:
        """The stack's part of the config; with the scored feature ``names``, drift
        detection is pointed at the features ``drift_on`` asks for."""
        known = {f.name for f in fields(StackConfig)}
        config = StackConfig(**{k: getattr(self, k) for k in known})
        if names is not None and self.drift_on == "frame" and self.drift_features is None:
            per_frame = _per_frame_features(names)
            watched = tuple(i for i, n in enumerate(names) if n in per_frame)
            if watched:
                config = replace(config, drift_features=watched)
        return config


class SourceWatch:
    """Everything trajwatch keeps about one source: features, detector stack, alarm."""

    def __init__(
        self, source: str, config: PipelineConfig, reference: DetectorStack | None = None
    ) -> None:
        self.source = source
        self.config = config
        self.engine = FeatureEngine(window=config.window, top_atoms=config.top_atoms)
        self.reference = reference
        self.scored = _scored(self.engine.names, config.unscored)
        """Indices of the features the detectors see."""
        self.names = tuple(self.engine.names[i] for i in self.scored)
        self._x = np.empty(self.scored.size)
        per_frame = _per_frame_features(self.names)
        self._per_frame = np.array([n in per_frame for n in self.names], dtype=bool)
        if reference is not None:
            expected = reference.meta.get("feature_names")
            if expected is not None and list(expected) != list(self.names):
                raise ValueError(
                    "the reference model was fitted on other features "
                    f"({len(expected)} vs {len(self.names)}); refit it with this version"
                )
        self.stack = self._new_stack()
        self.frames = 0
        self.last_features: NDArray[np.float64] = np.full(len(self.engine.names), math.nan)
        self.last_score = 0.0
        self._alarm_detector = ""
        self._alarm_severity = "warning"
        self._alarm_frame = 0

    def _new_stack(self) -> DetectorStack:
        if self.reference is not None:
            return self.reference.spawn()
        return DetectorStack(self.config.stack_config(self.names), n_features=len(self.names))

    @property
    def detector_name(self) -> str:
        return self.stack.fusion.describe()

    def process(self, frame: Frame) -> list[Event]:
        index = self.frames
        self.frames += 1
        features = self.engine.update(frame)
        self.last_features = features
        change = getattr(self.engine, "structure_change", None)
        if change is not None:
            return [self._structure_changed(frame, index, change)]
        x = features.take(self.scored, out=self._x)  # a reused buffer: no array per frame
        stack = self.stack
        alarm = stack.advance(x)
        self.last_score = stack.last_surprise
        if alarm is None and not stack.last_drift:
            return []
        events: list[Event] = []
        if alarm == "start" or alarm == "escalate":
            events.append(self._anomaly(frame, index, x, alarm))
        elif alarm == "end":
            events.append(
                self._event(
                    "recovered", frame, index, stack.last_surprise, self._alarm_severity,
                    self._alarm_detector,
                    message=f"alarm raised at frame {self._alarm_frame} is over",
                )
            )  # fmt: skip
        if stack.last_drift:
            events.append(self._drift(frame, index, x, stack.last_drift))
        return events

    def _structure_changed(self, frame: Frame, index: int, what: str) -> Event:
        """Atoms appeared, vanished or changed element: the run broke; start afresh."""
        self.stack = self._new_stack()
        return Event(
            "anomaly",
            frame=index,
            step=frame.step,
            time=frame.time,
            source=self.source,
            detector="structure",
            score=math.inf,
            threshold=0.0,
            severity="critical",
            onset_frame=index,
            message=what,
        )

    def _anomaly(
        self, frame: Frame, index: int, x: NDArray[np.float64], change: str
    ) -> Event:
        config = self.config
        stack = self.stack
        surprise = stack.last_surprise
        z = stack.deviations(x)
        features = evidence.top_features(
            self.names, x, z, config.top_features, urgent=self._per_frame
        )
        atoms = evidence.atoms(self.engine.attribution(), features, config.top_atoms)
        names = stack.names
        surprises = stack.surprises
        lead = int(np.argmax(surprises))
        detector = f"{stack.fusion.describe()}:{names[lead]}"
        severity = stack.severity(surprise)
        prefix = ""
        if change == "escalate":
            prefix = f"escalates the alarm raised at frame {self._alarm_frame}: "
        else:
            self._alarm_frame = index
        self._alarm_detector, self._alarm_severity = detector, severity
        pairs = zip(names, surprises, strict=True)
        per_detector = ", ".join(f"{n} {_p(s)}" for n, s in pairs)
        onset = stack.last_onset
        return Event(
            "anomaly",
            frame=index,
            step=frame.step,
            time=frame.time,
            source=self.source,
            detector=detector,
            score=surprise,
            threshold=config.threshold,
            severity=severity,
            onset_frame=onset if onset is not None else index,
            features=features,
            atoms=atoms,
            message=f"{prefix}{_describe(features)}; p: {per_detector}",
        )

    def _drift(
        self, frame: Frame, index: int, x: NDArray[np.float64], drift: Sequence[Change]
    ) -> Event:
        names = self.names
        changes = drift[: self.config.top_features]
        features = [FeatureDeviation(names[c.feature], float(x[c.feature]), c.z) for c in changes]
        lead = changes[0]
        return self._event(
            "drift", frame, index, abs(lead.z), "warning", lead.detector,
            features=features,
            message="slow change: " + ", ".join(
                f"{f.name} {f.deviation:+.1f} sd (block mean)" for f in features
            ),
        )  # fmt: skip

    def _event(
        self,
        kind: str,
        frame: Frame,
        index: int,
        score: float,
        severity: str,
        detector: str,
        *,
        features: list[FeatureDeviation] | None = None,
        message: str = "",
    ) -> Event:
        threshold = self.config.drift_threshold if kind == "drift" else self.config.threshold
        return Event(
            kind,
            frame=index,
            step=frame.step,
            time=frame.time,
            source=self.source,
            detector=detector,
            score=score,
            threshold=threshold,
            severity=severity,
            features=features or [],
            message=message,
        )


def _scored(names: Sequence[str], unscored: Sequence[str]) -> NDArray[np.intp]:
    """Indices of the features to score: all but ``unscored`` whose per-frame
    counterpart (``step_`` prefix or the catalogue's kind) the engine has."""
    per_frame = _per_frame_features(names)
    drop = {n for n in unscored if n in names and per_frame - {n}}
    return np.array([i for i, n in enumerate(names) if n not in drop], dtype=np.intp)


def _per_frame_features(names: Sequence[str]) -> set[str]:
    """Names of the features computed from the latest frame alone (not a window)."""
    try:
        from trajwatch.features.catalogue import FEATURES
    except ImportError:
        return {n for n in names if n.startswith("step_")}
    return {n for n in names if n in FEATURES and FEATURES[n].kind == "frame"}


def _p(surprise: float) -> str:
    return "0" if not math.isfinite(surprise) else f"{10.0**-surprise:.1e}"


def _describe(features: Sequence[FeatureDeviation]) -> str:
    return ", ".join(f"{f.name}={f.value:.4g} ({f.deviation:+.1f} sd)" for f in features)


class Pipeline:
    """Routes each frame to its source's :class:`SourceWatch`; hands events to the sinks.

    With ``reference`` (a model from :func:`fit_reference` or :func:`load_reference`)
    every source is judged against that model instead of learning its own normal.
    """

    def __init__(
        self,
        config: PipelineConfig | None = None,
        sinks: Sequence[Sink] = (),
        *,
        reference: DetectorStack | None = None,
    ) -> None:
        self.config = config or PipelineConfig()
        self.sinks = list(sinks)
        self.reference = reference
        self.sources: dict[str, SourceWatch] = {}
        self.events: list[Event] = []

    def process(self, frame: Frame) -> list[Event]:
        watch = self.sources.get(frame.source)
        if watch is None:
            watch = SourceWatch(frame.source, self.config, self.reference)
            self.sources[frame.source] = watch
        events = watch.process(frame)
        for event in events:
            self.events.append(event)
            for sink in self.sinks:
                sink.emit(event)
        return events


def fit_reference(frames: Iterable[Frame], config: PipelineConfig | None = None) -> DetectorStack:
    """Fit the detector stack on a trusted run and freeze it (reference mode).

    The run is watched in self-baseline mode, so frames it flags are not learned.
    """
    config = config or PipelineConfig()
    engine = FeatureEngine(window=config.window, top_atoms=config.top_atoms)
    scored = _scored(engine.names, config.unscored)
    names = [engine.names[i] for i in scored]
    stack = DetectorStack(config.stack_config(names), n_features=scored.size)
    n = 0
    for frame in frames:
        features = engine.update(frame)
        if getattr(engine, "structure_change", None) is not None and n:
            raise ValueError(f"the reference run changed structure at frame {n}")
        stack.update(features[scored])
        n += 1
    if n <= config.warmup_frames + config.min_calibration:
        raise ValueError(
            f"a reference needs more than {config.warmup_frames + config.min_calibration} "
            f"frames (warm-up + calibration), got {n}"
        )
    stack.meta = {
        "feature_names": [engine.names[i] for i in scored],
        "window": config.window,
        "top_atoms": config.top_atoms,
        "frames": n,
    }
    stack.freeze()
    stack.reset_stream()
    return stack


def save_reference(model: DetectorStack, path: str | Path) -> Path:
    """Write a fitted model to ``path`` (``.npz``, or ``.json``)."""
    return save(model, path)


def load_reference(path: str | Path) -> DetectorStack:
    """Read a model written by :func:`save_reference`."""
    model = load(path)
    if not isinstance(model, DetectorStack):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a detector stack")
    return model


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
