"""In-process detection: the pipeline runs inside the engine's process, no socket.

Every engine adapter hands its frames to a *target*: anything with ``send(frame) ->
bool``, a :class:`~trajwatch.streaming.Publisher` or a :class:`Watch`. A ``Watch`` feeds
each frame to a :class:`~trajwatch.pipeline.Pipeline`, keeps the last ``keep`` frames in
a ring and, on an anomaly, writes them (the flagged frame and the frames before it) to
an extxyz file. An anomaly of severity ``stop_on`` or worse sets :attr:`Watch.stop_requested`;
the adapters turn that into a clean stop of their engine (ASE and OpenMM raise
:class:`AlarmStop` between two steps, LAMMPS halts its run through ``fix halt``).

>>> from trajwatch.simulate import MDSpec, run_md
>>> watch = Watch(stop_on="high")
>>> for frame in run_md(MDSpec(steps=120, repeat=2, fault="clash", fault_frame=90)):
...     _ = watch.send(frame)
...     if watch.stop_requested:
...         break
>>> watch.alarm.frame, watch.alarm.severity, frame.step
(90, 'critical', 90)
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol

import numpy as np

from trajwatch.elements import MASSES, SYMBOLS
from trajwatch.events import SEVERITIES, Event, severity_rank
from trajwatch.frame import Frame
from trajwatch.pipeline import Pipeline, PipelineConfig
from trajwatch.sinks import Sink
from trajwatch.units import ASE_TIME_IN_FS

__all__ = ["AlarmStop", "FrameTarget", "Watch", "stop_event"]


class FrameTarget(Protocol):
    """Where an adapter sends frames: a Publisher, a Watch, or your own object."""

    def send(self, frame: Frame) -> bool: ...


class AlarmStop(Exception):  # noqa: N818 - it is a stop, not an error
    """Raised out of an engine's run loop when a :class:`Watch` asks to stop.

    ``event`` is the anomaly that asked for it, ``dump`` the extxyz file holding the
    flagged frame and the frames before it (None when the watch has no ``dump_dir``).
    """

    def __init__(self, event: Event, dump: Path | None = None) -> None:
        self.event = event
        self.dump = dump
        where = f"; frames kept in {dump}" if dump is not None else ""
        super().__init__(
            f"trajwatch stopped the run: {event.severity} {event.event} at step {event.step} "
            f"(frame {event.frame} of {event.source!r}){where}: {event.message}"
        )


def stop_event(target: object) -> AlarmStop | None:
    """The :class:`AlarmStop` a target asks for, or None (targets without a stop policy)."""
    if not getattr(target, "stop_requested", False):
        return None
    event = getattr(target, "alarm", None)
    if not isinstance(event, Event):
        return None
    dumps: list[Path] = getattr(target, "dumps", [])
    return AlarmStop(event, dumps[-1] if dumps else None)


class Watch:
    """Run the detection pipeline on each frame sent to it; ask the engine to stop on alarm.

    ``stop_on`` is the lowest severity (``warning``, ``high``, ``critical``) of an anomaly
    that stops the engine; None never stops. ``dump_dir``: on every anomaly, the last
    ``keep`` frames (the flagged one last) are written to
    ``dump_dir/<source>-step<step>.extxyz``. ``publish``: also forward every frame to
    this target (e.g. a Publisher feeding a live monitor). The sinks get every event and
    are closed by :meth:`close`.
    """

    def __init__(
        self,
        config: PipelineConfig | None = None,
        sinks: Sequence[Sink] = (),
        *,
        stop_on: str | None = "high",
        keep: int = 20,
        dump_dir: str | Path | None = None,
        publish: FrameTarget | None = None,
    ) -> None:
        if stop_on is not None and stop_on not in SEVERITIES:
            raise ValueError(f"stop_on must be None or one of {SEVERITIES}, not {stop_on!r}")
        if keep < 1:
            raise ValueError(f"keep must be >= 1, not {keep}")
        self.pipeline = Pipeline(config, sinks)
        self.stop_on = stop_on
        self.dump_dir = None if dump_dir is None else Path(dump_dir)
        self.publish = publish
        self.frames = 0
        #: the anomaly that asked the engine to stop (None while running)
        self.alarm: Event | None = None
        self.stop_requested = False
        #: extxyz files written, one per anomaly
        self.dumps: list[Path] = []
        self._ring: deque[Frame] = deque(maxlen=keep)
        self._stop_rank = None if stop_on is None else severity_rank(stop_on)

    @property
    def events(self) -> list[Event]:
        """Every event raised so far."""
        return self.pipeline.events

    def send(self, frame: Frame) -> bool:
        """Process one frame (the adapters call this once per step); always True."""
        if self.publish is not None:
            self.publish.send(frame)
        self._ring.append(frame)
        self.frames += 1
        for event in self.pipeline.process(frame):
            if event.event != "anomaly":
                continue
            if self.dump_dir is not None:
                self.dumps.append(self._dump(frame))
            stop_rank = self._stop_rank
            if (
                stop_rank is not None
                and not self.stop_requested
                and severity_rank(event.severity) >= stop_rank
            ):
                self.alarm = event
                self.stop_requested = True
        return True

    def reset(self) -> None:
        """Forget a stop request, to let the engine run on after an alarm."""
        self.stop_requested = False
        self.alarm = None

    def _dump(self, frame: Frame) -> Path:
        assert self.dump_dir is not None
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", frame.source) or "stream"
        path = self.dump_dir / f"{name}-step{frame.step}.extxyz"
        write_frames(path, [f for f in self._ring if f.source == frame.source])
        return path

    def close(self) -> None:
        """Close the sinks."""
        for sink in self.pipeline.sinks:
            sink.close()

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Watch(frames={self.frames}, events={len(self.events)}, "
            f"stop_requested={self.stop_requested})"
        )


def write_frames(path: Path, frames: Iterable[Frame]) -> None:
    """Write frames to an extxyz file (trajwatch's writer when there is one)."""
    try:
        from trajwatch.replay.xyz import write_extxyz
    except ImportError:
        _write_extxyz(path, frames)
    else:
        write_extxyz(path, list(frames))


def _write_extxyz(path: Path, frames: Iterable[Frame]) -> None:
    """Minimal ASE-compatible extxyz writer (velocities as ASE momenta, like ASE writes)."""
    with open(path, "w", encoding="utf-8") as out:
        for frame in frames:
            props = "species:S:1:pos:R:3"
            columns = [frame.positions]
            if frame.velocities is not None:
                props += ":momenta:R:3"
                masses = MASSES[frame.numbers][:, None]
                columns.append(frame.velocities * masses * ASE_TIME_IN_FS)
            if frame.forces is not None:
                props += ":forces:R:3"
                columns.append(frame.forces)
            info = []
            if frame.cell is not None:
                info.append('Lattice="' + " ".join(f"{v:.10g}" for v in frame.cell.ravel()) + '"')
            info.append(f"Properties={props}")
            if frame.energy is not None:
                info.append(f"energy={frame.energy!r}")
            info.append(f"step={frame.step}")
            if frame.time is not None:
                info.append(f"time={frame.time!r}")
            info.append('pbc="' + " ".join("T" if p else "F" for p in frame.pbc) + '"')
            out.write(f"{frame.n_atoms}\n{' '.join(info)}\n")
            table = np.hstack(columns)
            for z, row in zip(frame.numbers.tolist(), table.tolist(), strict=True):
                out.write(SYMBOLS[z] + " " + " ".join(f"{v:.10g}" for v in row) + "\n")
