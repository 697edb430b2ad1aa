"""Monitor state: cheap bookkeeping per frame, an immutable :class:`Snapshot` on demand.

The ingest loop calls :meth:`MonitorState.observe` once per frame (O(1): a few ring
stores and counters) and :meth:`MonitorState.snapshot` at most a few times a second;
the view renders snapshots only, so drawing never touches live state.

>>> from trajwatch.simulate import MDSpec, run_md
>>> from trajwatch.pipeline import Pipeline
>>> pipeline, state = Pipeline(), MonitorState()
>>> for frame in run_md(MDSpec(steps=200, repeat=2, fault="clash", fault_frame=170, source="cu")):
...     events = pipeline.process(frame)
...     state.observe(frame, pipeline.sources[frame.source], events)
>>> view = state.snapshot().sources[0]
>>> view.name, view.frames, view.status, view.alarms, view.first_alarm
('cu', 200, 'ALARM', 1, 170)
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from trajwatch.events import Event, severity_rank
from trajwatch.frame import Frame
from trajwatch.monitor.probe import QUANTITIES, Probe, Reading
from trajwatch.monitor.ring import Ring

__all__ = [
    "LoggedEvent",
    "MonitorState",
    "Series",
    "Snapshot",
    "SourceView",
    "Status",
]

Status = Literal["OK", "WARNING", "ALARM"]

_RATE_EVERY = 0.5  # seconds between two frame-rate checkpoints
_RATE_POINTS = 8  # checkpoints kept: the rate is measured over the last ~4 s
_DRIFT_HOLD = 100  # frames during which a drift event keeps a source at WARNING


@dataclass(frozen=True)
class Series:
    """One sparkline's data: the last frames' values, oldest first (read-only)."""

    key: str
    label: str
    unit: str
    values: NDArray[np.float64]
    reduce: Literal["max", "min"] = "max"
    threshold: float | None = None

    @property
    def last(self) -> float:
        return float(self.values[-1]) if self.values.size else math.nan


@dataclass(frozen=True)
class LoggedEvent:
    """An event and the wall-clock time (s since the epoch) at which the monitor saw it."""

    wall: float
    event: Event


@dataclass(frozen=True)
class SourceView:
    """Everything the view shows about one source, frozen at snapshot time."""

    name: str
    status: Status
    note: str
    frames: int
    fps: float
    latency_p50: float | None
    """Seconds from publish to processed, median over the recent frames (None: unknown)."""
    latency_p99: float | None
    lost: int
    restarts: int
    idle: float
    """Seconds since the last frame."""
    active: float
    """Seconds from the first frame to the last."""
    step: int
    sim_time: float | None
    """Simulation time of the last frame, fs."""
    n_atoms: int
    score: float
    threshold: float
    warming_up: bool
    alarm: bool
    severity: str | None
    """Severity of the alarm that is on (None when none is)."""
    alarms: int
    worst: str | None
    first_alarm: int | None
    onset: int | None
    """Onset frame of the alarm that is on, or of the last one."""
    series: tuple[Series, ...]
    """The fused score first, then one per :data:`~trajwatch.monitor.probe.QUANTITIES`."""
    last_anomaly: Event | None


@dataclass(frozen=True)
class Snapshot:
    """The whole monitor at one instant: what :func:`~trajwatch.monitor.render.render` draws."""

    title: str
    endpoint: str
    uptime: float
    frames: int
    malformed: int
    lost: int
    sources: tuple[SourceView, ...]
    events: tuple[LoggedEvent, ...]
    """The latest events, oldest first."""
    messages: tuple[str, ...]
    """Recent log lines (malformed messages, failed alarm commands)."""
    finished: bool = False

    @property
    def alarms(self) -> int:
        return sum(s.alarms for s in self.sources)

    def source(self, name: str) -> SourceView:
        return next(s for s in self.sources if s.name == name)


class _Track:
    """Ingest-side state of one source (mutable; only the ingest thread touches it)."""

    def __init__(self, name: str, watch: Any, history: int, latencies: int) -> None:
        self.name = name
        self.probe = Probe(watch)
        self.frames = 0
        self.first_seen = 0.0
        self.last_seen = 0.0
        self.score = Ring(history)
        self.quantities = [Ring(history) for _ in QUANTITIES]
        self.latency = Ring(latencies)
        self.latency_max = 0.0
        self.checkpoints: deque[tuple[float, int]] = deque(maxlen=_RATE_POINTS)
        self.reading: Reading | None = None
        self.step = 0
        self.sim_time: float | None = None
        self.n_atoms = 0
        self.alarms = 0
        self.worst: str | None = None
        self.first_alarm: int | None = None
        self.last_anomaly: Event | None = None
        self.last_drift: int | None = None
        self.last_recovered: int | None = None


class MonitorState:
    """Per-source counters and ring buffers, fed frame by frame; snapshots on demand.

    ``stats`` is the subscriber's :class:`~trajwatch.streaming.SubscriberStats` (or
    None for files): lost and malformed counts are read from it at snapshot time.
    ``history`` frames are kept per sparkline, ``latencies`` for the percentiles.
    """

    def __init__(
        self,
        *,
        title: str = "trajwatch monitor",
        endpoint: str = "",
        stats: Any = None,
        history: int = 600,
        latencies: int = 1024,
        max_events: int = 200,
        stall_after: float = 10.0,
    ) -> None:
        self.title = title
        self.endpoint = endpoint
        self.stats = stats
        self.history = history
        self.latencies = latencies
        self.stall_after = stall_after
        self.started = time.monotonic()
        self.frames = 0
        self.finished = False
        self.tracks: dict[str, _Track] = {}
        self.events: deque[LoggedEvent] = deque(maxlen=max_events)
        self.messages: deque[str] = deque(maxlen=5)

    def observe(
        self,
        frame: Frame,
        watch: Any,
        events: Sequence[Event],
        *,
        wall: float | None = None,
        now: float | None = None,
    ) -> None:
        """Record one processed frame: ``watch`` is its SourceWatch, ``events`` what
        processing it raised; ``wall``/``now`` are the receive time (epoch/monotonic)."""
        if watch is None:
            raise TypeError("observe() needs the frame's SourceWatch (process the frame first)")
        now = time.monotonic() if now is None else now
        track = self.tracks.get(frame.source)
        if track is None:
            track = self.tracks[frame.source] = _Track(
                frame.source, watch, self.history, self.latencies
            )
            track.first_seen = now
            track.checkpoints.append((now, 0))
        track.frames += 1
        self.frames += 1
        track.last_seen = now
        if now - track.checkpoints[-1][0] >= _RATE_EVERY:
            track.checkpoints.append((now, track.frames))
        if frame.wall_time is not None:
            latency = (time.time() if wall is None else wall) - frame.wall_time
            track.latency.push(latency)
            track.latency_max = max(track.latency_max, latency)
        reading = track.probe.read(watch)
        track.reading = reading
        track.score.push(reading.score)
        for ring, value in zip(track.quantities, reading.values, strict=True):
            ring.push(value)
        track.step = frame.step
        track.sim_time = frame.time
        track.n_atoms = frame.n_atoms
        for event in events:
            self.record(event, wall)

    def record(self, event: Event, wall: float | None = None) -> None:
        """Log an event (``observe`` does it for the events it is given)."""
        self.events.append(LoggedEvent(time.time() if wall is None else wall, event))
        track = self.tracks.get(event.source)
        if track is None:
            return
        if event.event == "anomaly":
            track.alarms += 1
            track.last_anomaly = event
            if track.first_alarm is None:
                track.first_alarm = event.frame
            if track.worst is None or severity_rank(event.severity) > severity_rank(track.worst):
                track.worst = event.severity
        elif event.event == "drift":
            track.last_drift = event.frame
        elif event.event == "recovered":
            track.last_recovered = event.frame

    def message(self, text: str) -> None:
        """Show a line of text in the view (thread-safe: a deque append)."""
        self.messages.append(text)

    # -- snapshots ----------------------------------------------------------------------

    def snapshot(self, now: float | None = None) -> Snapshot:
        """An immutable copy of everything the view shows."""
        now = time.monotonic() if now is None else now
        per_source = getattr(self.stats, "per_source", {}) or {}
        sources = tuple(
            self._view(track, per_source.get(name), now)
            for name, track in sorted(self.tracks.items())
        )
        return Snapshot(
            title=self.title,
            endpoint=self.endpoint,
            uptime=now - self.started,
            frames=self.frames,
            malformed=int(getattr(self.stats, "malformed", 0)),
            lost=int(getattr(self.stats, "lost", 0)),
            sources=sources,
            events=tuple(self.events),
            messages=tuple(self.messages),
            finished=self.finished,
        )

    def _view(self, track: _Track, stats: Any, now: float) -> SourceView:
        reading = track.reading
        assert reading is not None  # a track exists only after its first frame
        idle = max(0.0, now - track.last_seen)
        alarm_on = reading.alarm
        severity = None
        if alarm_on and track.last_anomaly is not None:
            severity = track.last_anomaly.severity
        status, note = self._status(track, reading, severity, idle)
        latency = track.latency.values()
        p50 = p99 = None
        if latency.size:
            p50, p99 = (float(v) for v in np.percentile(latency, [50, 99]))
        series = (
            Series("score", "score", "", track.score.values(), "max", reading.threshold),
            *(
                Series(q.key, q.label, q.unit, ring.values(), q.reduce)
                for q, ring in zip(QUANTITIES, track.quantities, strict=True)
            ),
        )
        onset = None
        if track.last_anomaly is not None:
            onset = track.last_anomaly.onset_frame
            if onset is None:
                onset = track.last_anomaly.frame
        return SourceView(
            name=track.name,
            status=status,
            note=note,
            frames=track.frames,
            fps=_rate(track, now),
            latency_p50=p50,
            latency_p99=p99,
            lost=int(getattr(stats, "lost", 0)),
            restarts=int(getattr(stats, "restarts", 0)),
            idle=idle,
            active=track.last_seen - track.first_seen,
            step=track.step,
            sim_time=track.sim_time,
            n_atoms=track.n_atoms,
            score=reading.score,
            threshold=reading.threshold,
            warming_up=reading.warming_up,
            alarm=alarm_on,
            severity=severity,
            alarms=track.alarms,
            worst=track.worst,
            first_alarm=track.first_alarm,
            onset=onset,
            series=series,
            last_anomaly=track.last_anomaly,
        )

    def _status(
        self, track: _Track, reading: Reading, severity: str | None, idle: float
    ) -> tuple[Status, str]:
        anomaly = track.last_anomaly
        if reading.alarm and anomaly is not None:
            status: Status = "WARNING" if severity == "warning" else "ALARM"
            onset = anomaly.onset_frame if anomaly.onset_frame is not None else anomaly.frame
            return status, f"{severity} alarm since frame {anomaly.frame} (onset {onset})"
        if reading.alarm:
            return "ALARM", "alarm on"
        if idle >= self.stall_after and not self.finished:
            return "WARNING", f"no frame for {idle:.0f} s"
        if track.last_drift is not None and track.frames - 1 - track.last_drift < _DRIFT_HOLD:
            return "WARNING", f"drift at frame {track.last_drift}"
        if reading.warming_up:
            return "OK", f"learning normal ({track.frames}/{reading.warmup_frames} frames)"
        if track.last_recovered is not None:
            return "OK", f"recovered at frame {track.last_recovered}"
        return "OK", "watching"


def _rate(track: _Track, now: float) -> float:
    """Frames per second over the last few seconds (0 once the source has gone quiet)."""
    since, frames = track.checkpoints[0]
    span = now - since
    recent = track.frames - frames
    if span < _RATE_EVERY / 2 or recent <= 0:  # too early to tell
        return 0.0
    rate = recent / span
    if now - track.last_seen > max(2.0, 3.0 / rate):
        return 0.0
    return rate
