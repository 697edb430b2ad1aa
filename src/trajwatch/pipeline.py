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
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

from trajwatch._direct_call import fingerprint
from trajwatch._kernels_watch import WATCH_FRAME, watch_state
from trajwatch.detectors import evidence
from trajwatch.detectors.drift import Change
from trajwatch.detectors.external import ExternalScore
from trajwatch.detectors.stack import DetectorStack, StackConfig
from trajwatch.detectors.state import load, save
from trajwatch.detectors.threshold import Calibrator
from trajwatch.events import Event, FeatureDeviation
from trajwatch.features.engine import FeatureEngine
from trajwatch.frame import Frame
from trajwatch.sinks import Sink

if TYPE_CHECKING:  # torch is imported only when the LSTM is switched on
    from trajwatch.detectors.lstm import LSTMDetector
    from trajwatch.lstm.model import LSTMModel

__all__ = [
    "Pipeline",
    "PipelineConfig",
    "RunSummary",
    "SourceWatch",
    "fit_reference",
    "load_reference",
    "run",
    "save_reference",
    "warmup",
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
    lstm: bool = False
    """Add the LSTM autoencoder to the fusion (``docs/lstm.md``)."""
    lstm_model: str = ""
    """Its model file; "" for the weights shipped with trajwatch."""
    lstm_stride: int = 1
    """Score the LSTM window every this many frames (the score holds in between)."""
    lstm_calibration: int = 200
    """The LSTM's p-values come from the model's validation errors plus the source's
    first this many scored frames (those judged normal); then its calibration stays as it
    is, so that a fault that builds up slowly does not become the norm."""

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
        self,
        source: str,
        config: PipelineConfig,
        reference: DetectorStack | None = None,
        lstm: LSTMModel | None = None,
    ) -> None:
        self.source = source
        self.config = config
        self.engine = FeatureEngine(window=config.window, top_atoms=config.top_atoms)
        self.reference = reference
        self.lstm = _lstm_detector(lstm, self.engine.names, config)
        """The LSTM autoencoder over all features (None when it is off)."""
        self._ahead: deque[_Ahead] = deque()
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
        self._one_call: Any = None  # see _one_call_state
        self._one_call_of: tuple[Any, Any] | None = None
        self.frames = 0
        self.last_features: NDArray[np.float64] = np.full(len(self.engine.names), math.nan)
        self.last_score = 0.0
        self._alarm_detector = ""
        self._alarm_severity = "warning"
        self._alarm_frame = 0

    def _new_stack(self) -> DetectorStack:
        if self.reference is not None:
            return self.reference.spawn()
        config = _with_lstm(self.config.stack_config(self.names), self.lstm is not None)
        return DetectorStack(config, n_features=len(self.names))

    @property
    def stack(self) -> DetectorStack:
        """The detector stack judging this source."""
        return self._stack

    @stack.setter
    def stack(self, stack: DetectorStack) -> None:
        # whoever replaces the stack (a structure change, a restored checkpoint), the LSTM
        # keeps feeding the slot of the stack in use
        self._slot, self._calibrator = _lstm_slot(stack, self.lstm)
        self._stack = stack

    one_call = True
    """Take the usual frame's features and detectors in one compiled call (the same
    events; False forces two calls, for comparison)."""

    @property
    def detector_name(self) -> str:
        return self.stack.fusion.describe()

    def process(self, frame: Frame) -> list[Event]:
        index = self.frames
        self.frames = index + 1
        stack = self._stack
        if (
            stack._args is not None  # the fused detector kernel, its arguments ready
            and self.one_call
            and self.lstm is None
            and not stack._externals
            and not self._ahead
            and stack.frames >= stack._warm
        ):
            engine = self.engine
            args = engine._kernel_args(frame)
            state = self._one_call_state(engine._state, stack._args)
            if args is not None and state is not None:  # features and detectors in one call
                features = np.empty(len(engine.names))
                stack_index = stack.frames  # (the stack's count, not the pipeline's index)
                try:  # the compiled kernel for these types, without Numba's dispatcher
                    call = WATCH_FRAME.entries.get(fingerprint(args))
                except NotImplementedError:  # a value Numba cannot type: the dispatcher
                    call = None  # (below) says which argument
                if call is None:
                    call = WATCH_FRAME.entry(args, (features, stack_index, state))
                status = call(*args, features, stack_index, state)
                if status >= 0:
                    engine.structure_change = None
                    engine._last = frame
                    self._attribution = engine.attribution
                    self.last_features = features
                    stack._begin_fused()
                    return self._events(frame, index, self._x, stack._end_fused(status))
                # else the feature kernel asked for something: the usual path answers it
        if self._ahead:
            ahead = self._ahead.popleft()
            if ahead.frame is not frame:
                raise RuntimeError("frames given to prefetch must then be processed in order")
            features, change, self._attribution = ahead.features, ahead.change, ahead.attribution
        else:
            engine = self.engine
            features = engine.update(frame)
            change = engine.structure_change
            self._attribution = engine.attribution
            ahead = None
        self.last_features = features
        if change is not None:
            return [self._structure_changed(frame, index, change, reset_lstm=ahead is None)]
        x = features.take(self.scored, out=self._x)  # a reused buffer: no array per frame
        lstm = self.lstm
        if lstm is not None:
            if ahead is None:
                lstm_score, lstm_frames = lstm.score_one(features), lstm.scored_frames
            else:
                lstm_score, lstm_frames = ahead.lstm_score, ahead.lstm_frames
            self._slot.set(lstm_score)
        stack = self._stack
        alarm = stack._advance(x)  # x is the engine's float64 vector: no checks needed
        if (
            lstm is not None
            and 0 < lstm_frames <= self.config.lstm_calibration
            and not (stack.alarm.active or stack.frozen)
        ):
            self._calibrator.add(lstm_score)  # the source's own first frames
        return self._events(frame, index, x, alarm)

    def _one_call_state(self, engine_state: tuple[Any, ...], stack_args: tuple[Any, ...]) -> Any:
        """The arrays of :func:`_watch_frame` as one argument, built again when the engine
        or the stack has changed them (a pair list grew, a new stack); None if it cannot."""
        built = self._one_call_of
        if built is None or built[0] is not engine_state or built[1] is not stack_args:
            self._one_call = watch_state(engine_state, self.scored, self._x, stack_args)
            self._one_call_of = (engine_state, stack_args)
        return self._one_call

    def _events(
        self,
        frame: Frame,
        index: int,
        x: NDArray[np.float64],
        alarm: Literal["start", "end", "escalate"] | None,
    ) -> list[Event]:
        """The events of a frame the stack has judged: an alarm's start, escalation or end,
        drift."""
        stack = self._stack
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

    def prefetch(self, frames: Sequence[Frame]) -> None:
        """Run the feature engine over ``frames`` now and score their LSTM windows in one
        batch; :meth:`process` then takes them, in the same order, at the cost of the
        detectors alone. The events are the same as without prefetching."""
        rows: list[NDArray[np.float64]] = []
        ahead: list[_Ahead] = []

        def score() -> None:  # the windows of the rows since the last reset, batched
            if self.lstm is not None and rows:
                before = self.lstm.scored_frames
                scores = self.lstm.score_many(np.vstack(rows))
                first = len(rows) - (self.lstm.scored_frames - before)  # first with a score
                for k, (item, s) in enumerate(zip(ahead[-len(rows) :], scores, strict=True)):
                    item.lstm_score = float(s)
                    item.lstm_frames = before + max(0, k - first + 1)
                rows.clear()

        for frame in frames:
            features = self.engine.update(frame)
            change = getattr(self.engine, "structure_change", None)
            ahead.append(_Ahead(frame, features, change, self.engine.attribution_later()))
            if change is not None:
                score()
                if self.lstm is not None:
                    self.lstm.reset()
                ahead[-1].lstm_score = math.nan  # not scored: the stream starts afresh
            else:
                rows.append(features)
        score()
        self._ahead.extend(ahead)

    def _structure_changed(
        self, frame: Frame, index: int, what: str, *, reset_lstm: bool = True
    ) -> Event:
        """Atoms appeared, vanished or changed element: the run broke; start afresh."""
        self.stack = self._new_stack()
        if self.lstm is not None and reset_lstm:  # (prefetch resets it in its own pass)
            self.lstm.reset()
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

    def _anomaly(self, frame: Frame, index: int, x: NDArray[np.float64], change: str) -> Event:
        config = self.config
        stack = self.stack
        surprise = stack.last_surprise
        z = stack.deviations(x)
        features = evidence.top_features(
            self.names, x, z, config.top_features, urgent=self._per_frame
        )
        atoms = evidence.atoms(self._attribution(), features, config.top_atoms)
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
        if self.lstm is not None and names[lead] == "lstm":
            worst = ", ".join(f"{n} {d:+.1f}x" for n, d in self.lstm.explain(config.top_features))
            per_detector += f"; lstm worst reconstructed: {worst}"
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


# -- the LSTM autoencoder as one more detector in the fusion (docs/lstm.md) ----------------


@dataclass(slots=True)
class _Ahead:
    """A frame whose features (and LSTM score) :meth:`SourceWatch.prefetch` computed."""

    frame: Frame
    features: NDArray[np.float64]
    change: str | None
    attribution: Callable[[], Any]
    lstm_score: float = 0.0
    lstm_frames: int = 0


def _with_lstm(config: StackConfig, on: bool) -> StackConfig:
    """The stack config with the ``lstm`` slot added (once) when the LSTM is on."""
    if not on or "lstm" in config.detectors:
        return config
    return replace(config, detectors=(*config.detectors, "lstm"))


def _lstm_detector(
    model: LSTMModel | None, names: Sequence[str], config: PipelineConfig
) -> LSTMDetector | None:
    if model is None:
        return None
    from trajwatch.detectors.lstm import LSTMDetector

    return LSTMDetector(model, features=names, stride=config.lstm_stride)


def _lstm_slot(
    stack: DetectorStack, lstm: LSTMDetector | None
) -> tuple[ExternalScore, Calibrator]:
    """The stack's ``lstm`` slot and its calibrator, seeded with the model's validation
    errors (so the LSTM counts from its first window on)."""
    if lstm is None and "lstm" in stack.names:
        raise ValueError(
            "the detector stack has an LSTM slot (a reference fitted with the LSTM?) but the "
            "LSTM is off: switch it on (lstm=True, or leave out --no-lstm)"
        )
    if lstm is not None and "lstm" not in stack.names:
        raise ValueError(
            "the detector stack has no LSTM slot (a reference fitted without the LSTM?): "
            "refit it with the LSTM on, or switch the LSTM off (--no-lstm)"
        )
    if lstm is None:
        return ExternalScore(), Calibrator(1)
    j = stack.names.index("lstm")
    slot: ExternalScore = stack.detectors[j]
    calibrator = stack.calibrators[j]
    if calibrator.n == 0:
        errors = lstm.model.calibration.errors
        picked = np.linspace(0, errors.size - 1, min(errors.size, calibrator.size))
        # a fixed shuffle: the ring forgets its oldest entries first, not its smallest
        for e in np.random.default_rng(0).permutation(errors[picked.round().astype(int)]):
            calibrator.add(float(e))
    return slot, calibrator


def load_lstm(config: PipelineConfig) -> LSTMModel | None:
    """The LSTM model ``config`` asks for (None if the LSTM is off)."""
    if not config.lstm:
        return None
    from trajwatch.lstm.model import LSTMModel

    return LSTMModel.load(config.lstm_model) if config.lstm_model else LSTMModel.load_default()


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
        lstm: LSTMModel | None = None,
    ) -> None:
        self.config = config or PipelineConfig()
        self.sinks = list(sinks)
        self.reference = reference
        self.lstm = lstm if lstm is not None else load_lstm(self.config)
        """The LSTM model every source uses (None: no LSTM), loaded once."""
        if self.lstm is not None:  # refuse a model of other features now, not at frame 0
            self.lstm.feature_index(FeatureEngine(window=self.config.window).names)
        self.sources: dict[str, SourceWatch] = {}
        self.events: list[Event] = []

    def _watch(self, source: str) -> SourceWatch:
        watch = self.sources.get(source)
        if watch is None:
            watch = SourceWatch(source, self.config, self.reference, self.lstm)
            self.sources[source] = watch
        return watch

    @property
    def batches(self) -> bool:
        """True when :meth:`prefetch` pays: the LSTM scores windows faster in batches."""
        return self.lstm is not None

    def prefetch(self, frames: Sequence[Frame]) -> None:
        """Compute the features and LSTM scores of ``frames`` (which must then go through
        :meth:`process`, in this order) in one batch per source. Callers that hold
        several frames at once (a file, a backed-up socket) call it first."""
        by_source: dict[str, list[Frame]] = {}
        for frame in frames:
            by_source.setdefault(frame.source, []).append(frame)
        for source, batch in by_source.items():
            self._watch(source).prefetch(batch)

    def process(self, frame: Frame) -> list[Event]:
        watch = self.sources.get(frame.source)
        if watch is None:
            watch = self._watch(frame.source)
        events = watch.process(frame)
        if not events:
            return events
        for event in events:
            self.events.append(event)
            for sink in self.sinks:
                sink.emit(event)
        return events


def warmup() -> float:
    """Compile every kernel a frame can meet (or load it from Numba's disk cache) before
    the first real frame; returns the seconds it took.

    The feature engine's and the detector stack's warm-ups, then a small pipeline past
    its warm-up, for the kernel that takes the usual frame in one call.
    """
    from trajwatch.detectors.stack import warmup as warmup_detectors
    from trajwatch.features.engine import warmup as warmup_features

    start = time.perf_counter()
    warmup_features()
    warmup_detectors()
    config = PipelineConfig(window=4, warmup_frames=4, min_calibration=2, calibration=16)
    pipeline = Pipeline(config)
    rng = np.random.default_rng(0)
    base = rng.uniform(0.0, 6.0, size=(4, 3))
    for k in range(12):
        moved = base + rng.normal(0.0, 0.05, size=base.shape)
        pipeline.process(Frame(moved, [29] * 4, energy=-1.0, cell=np.eye(3) * 6.0, step=k))
    return time.perf_counter() - start


def fit_reference(
    frames: Iterable[Frame], config: PipelineConfig | None = None, *, lstm: LSTMModel | None = None
) -> DetectorStack:
    """Fit the detector stack on a trusted run and freeze it (reference mode).

    The run is watched in self-baseline mode, so frames it flags are not learned. With
    the LSTM on (``config.lstm`` or an ``lstm`` model), its scores join the stack too.
    """
    config = config or PipelineConfig()
    model = lstm if lstm is not None else load_lstm(config)
    engine = FeatureEngine(window=config.window, top_atoms=config.top_atoms)
    scored = _scored(engine.names, config.unscored)
    names = [engine.names[i] for i in scored]
    stack_config = _with_lstm(config.stack_config(names), model is not None)
    stack = DetectorStack(stack_config, n_features=scored.size)
    detector = _lstm_detector(model, engine.names, config)
    slot, calibrator = _lstm_slot(stack, detector)
    rows = []
    for frame in frames:
        rows.append(engine.update(frame))
        if getattr(engine, "structure_change", None) is not None and len(rows) > 1:
            raise ValueError(f"the reference run changed structure at frame {len(rows) - 1}")
    n = len(rows)
    if n <= config.warmup_frames + config.min_calibration:
        raise ValueError(
            f"a reference needs more than {config.warmup_frames + config.min_calibration} "
            f"frames (warm-up + calibration), got {n}"
        )
    features = np.vstack(rows)
    lstm_scores = detector.score_many(features) if detector is not None else np.zeros(n)
    for i in range(n):
        slot.set(float(lstm_scores[i]))
        stack.update(features[i, scored])
        has_score = detector is not None and i >= detector.model.first_scored_frame
        if has_score and not stack.alarm.active:  # the trusted run calibrates it too
            calibrator.add(float(lstm_scores[i]))
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
