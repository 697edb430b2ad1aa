"""Where events go: a JSON-lines log, a text stream, an alert socket, a shell command, a
Python callback, and extxyz dumps of the flagged frames.

Every sink has ``emit(event)`` and ``close()``. The JSONL sink writes and flushes each
event as it is raised (``fsync=True`` also forces it to the disk), so an alarm that was
emitted is in the log even if the monitor is killed right after. :class:`FrameDump` also
needs to see the frames: call its ``observe(frame)`` before the pipeline processes the
frame (``trajwatch.monitor.live.ingest`` and ``scan`` do).

>>> import io
>>> from trajwatch.events import Event
>>> out = io.StringIO()
>>> sink = StreamSink(out)
>>> sink.emit(Event("info", 0, 0, None, "run", "pipeline", 0.0, 0.0, "warning", message="hi"))
>>> out.getvalue().startswith('{"event":"info"')
True
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from trajwatch.events import Event, severity_rank
from trajwatch.frame import Frame

__all__ = [
    "ALERT_TOPIC_SEPARATOR",
    "AlarmCallback",
    "AlarmCommand",
    "AlertPublisher",
    "CallbackSink",
    "FrameDump",
    "JsonlSink",
    "Sink",
    "StreamSink",
    "alert_topic",
]

logger = logging.getLogger("trajwatch.sinks")


class Sink(Protocol):
    def emit(self, event: Event) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """Write events to a JSON-lines file, one flushed line per event."""

    def __init__(self, path: str | Path, *, fsync: bool = False, append: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115
        self.count = 0

    def emit(self, event: Event) -> None:
        self._file.write(event.to_json() + "\n")
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())
        self.count += 1

    def close(self) -> None:
        self._file.close()


class StreamSink:
    """Write events as JSON lines to an open text stream (stdout for ``--no-tui``)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def emit(self, event: Event) -> None:
        self.stream.write(event.to_json() + "\n")
        self.stream.flush()

    def close(self) -> None:
        pass


class CallbackSink:
    """Call a function with each event."""

    def __init__(self, callback: Callable[[Event], object]) -> None:
        self.callback = callback

    def emit(self, event: Event) -> None:
        self.callback(event)

    def close(self) -> None:
        pass


class AlarmCallback:
    """Call a function on anomalies of at least ``min_severity``: e.g. to stop the engine.

    ``once=True`` calls it for the first such anomaly only. The callback runs in the
    ingest thread, so it should be quick (set a flag, signal a process).

    >>> import threading
    >>> from trajwatch.events import Event
    >>> stop = threading.Event()
    >>> sink = AlarmCallback(lambda event: stop.set(), min_severity="high")
    >>> sink.emit(Event("anomaly", 9, 9, None, "md", "zscore", 9.0, 8.0, "warning"))
    >>> stop.is_set()
    False
    >>> sink.emit(Event("anomaly", 30, 30, None, "md", "zscore", 40.0, 8.0, "critical"))
    >>> stop.is_set(), sink.calls
    (True, 1)

    With ASE, run the dynamics step by step and stop when the flag is set::

        for _ in dyn.irun(steps):
            publisher.send(frame_from_atoms(atoms))  # or pipeline.process(...)
            if stop.is_set():
                break
    """

    def __init__(
        self,
        callback: Callable[[Event], object],
        *,
        min_severity: str = "warning",
        once: bool = False,
    ) -> None:
        self.callback = callback
        self.min_rank = severity_rank(min_severity)
        self.once = once
        self.calls = 0

    def emit(self, event: Event) -> None:
        if event.event != "anomaly" or severity_rank(event.severity) < self.min_rank:
            return
        if self.once and self.calls:
            return
        self.calls += 1
        self.callback(event)

    def close(self) -> None:
        pass


# -- alert socket ---------------------------------------------------------------------

ALERT_TOPIC_SEPARATOR = "/"


def alert_topic(event: Event) -> str:
    """``"<kind>/<source>"``: subscribe to ``"anomaly"`` for every anomaly, to
    ``"anomaly/md1"`` for one source's, to ``""`` for everything.

    >>> alert_topic(Event("drift", 1, 1, None, "md1", "adwin", 1.0, 1.0, "warning"))
    'drift/md1'
    """
    return f"{event.event}{ALERT_TOPIC_SEPARATOR}{event.source}"


class AlertPublisher:
    """Re-publish events on a ZeroMQ PUB socket for other tools, as JSON (never pickle).

    Each event is a two-part message ``[topic, json]``: the topic is
    :func:`alert_topic` (UTF-8), the body the event's JSON line (the same object as in
    the JSONL log, without the newline). Sends never block the monitor: a subscriber whose
    queue is full (``hwm`` alerts) misses alerts, and one that connects late misses those
    sent before it joined (PUB/SUB semantics; the JSONL log is the complete record).

    >>> import json, zmq
    >>> alerts = AlertPublisher("tcp://127.0.0.1:*")
    >>> sub = zmq.Context.instance().socket(zmq.SUB)
    >>> _ = sub.connect(alerts.endpoint); sub.subscribe(b"anomaly"); sub.rcvtimeo = 5000
    >>> event = Event("anomaly", 7, 70, 14.0, "md", "zscore", 41.0, 8.0, "critical")
    >>> while not sub.poll(100):  # PUB drops alerts sent before the subscription arrives
    ...     alerts.emit(event)
    >>> topic, body = sub.recv_multipart()
    >>> topic, json.loads(body)["frame"]
    (b'anomaly/md', 7)
    >>> sub.close(linger=0); alerts.close()
    """

    def __init__(
        self,
        endpoint: str = "tcp://127.0.0.1:5556",
        *,
        bind: bool = True,
        allow_remote: bool = False,
        hwm: int = 1000,
        context: Any = None,
    ) -> None:
        import zmq

        from trajwatch.streaming.protocol import check_bind_endpoint

        if bind:
            check_bind_endpoint(endpoint, allow_remote)
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        socket = self._context.socket(zmq.PUB)
        try:
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.SNDHWM, hwm)
            if bind:
                socket.bind(endpoint)
            else:
                socket.connect(endpoint)
        except BaseException:
            socket.close(linger=0)
            if self._own_context:
                self._context.term()
            raise
        self._socket = socket
        self._noblock = int(zmq.NOBLOCK)
        last = socket.getsockopt(zmq.LAST_ENDPOINT)
        #: the endpoint actually bound or connected (a wildcard port resolved)
        self.endpoint = last.decode() if isinstance(last, bytes) and last else endpoint
        self.sent = 0

    def emit(self, event: Event) -> None:
        parts = [alert_topic(event).encode("utf-8"), event.to_json().encode("utf-8")]
        self._socket.send_multipart(parts, self._noblock)  # PUB drops, never blocks
        self.sent += 1

    def close(self) -> None:
        if not self._socket.closed:
            self._socket.close(linger=0)
        if self._own_context and not self._context.closed:
            self._context.term()


# -- shell command on alarm -----------------------------------------------------------


class AlarmCommand:
    """Run a shell command once per anomaly event, without waiting for it.

    The command line is the user's and is never built from event text: the event
    reaches the command as JSON on its stdin and in environment variables
    (``TRAJWATCH_EVENT`` the JSON, ``TRAJWATCH_SOURCE``, ``TRAJWATCH_SEVERITY``,
    ``TRAJWATCH_FRAME``, ``TRAJWATCH_STEP``). ``output`` receives the command's stdout
    and stderr (default: discarded, so it cannot draw over the live view or into the
    JSON on stdout). Finished commands are reaped at each event and at ``close()``;
    ``close(wait=...)`` waits that long for those still running.

    >>> import json, sys, tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), "alarm.json")
    >>> sink = AlarmCommand(f'cat > "{out}"')
    >>> sink.emit(Event("anomaly", 7, 70, 14.0, "md", "zscore", 41.0, 8.0, "critical"))
    >>> sink.close(wait=10)
    >>> from pathlib import Path
    >>> json.loads(Path(out).read_text())["severity"], sink.started, sink.failed
    ('critical', 1, 0)
    """

    def __init__(
        self,
        command: str,
        *,
        kinds: Sequence[str] = ("anomaly",),
        output: IO[Any] | int | None = subprocess.DEVNULL,
    ) -> None:
        if not command.strip():
            raise ValueError("the alarm command is empty")
        self.command = command
        self.kinds = tuple(kinds)
        self.output = output
        self.started = 0
        self.failed = 0
        self._running: list[subprocess.Popen[bytes]] = []

    def emit(self, event: Event) -> None:
        self._reap()
        if event.event not in self.kinds:
            return
        payload = event.to_json()
        env = dict(os.environ)
        env.update(
            TRAJWATCH_EVENT=payload,
            TRAJWATCH_KIND=event.event,
            TRAJWATCH_SOURCE=event.source,
            TRAJWATCH_SEVERITY=event.severity,
            TRAJWATCH_FRAME=str(event.frame),
            TRAJWATCH_STEP="" if event.step is None else str(event.step),
        )
        try:
            # the shell runs the user's own command line; event data only travels in
            # env and stdin, so no event text is ever interpreted by the shell
            process = subprocess.Popen(
                self.command,
                shell=True,
                stdin=subprocess.PIPE,
                stdout=self.output,
                stderr=self.output,
                env=env,
                start_new_session=True,  # Ctrl-C in the monitor does not kill it
            )
        except OSError as error:
            self.failed += 1
            logger.warning("--on-alarm command could not start: %s", error)
            return
        self.started += 1
        assert process.stdin is not None
        try:  # one event is far smaller than a pipe buffer: this write never blocks
            process.stdin.write(payload.encode("utf-8") + b"\n")
            process.stdin.close()
        except OSError:
            pass  # the command does not read stdin and has exited: fine
        self._running.append(process)

    def _reap(self) -> None:
        still = []
        for process in self._running:
            code = process.poll()
            if code is None:
                still.append(process)
            elif code != 0:
                self.failed += 1
                logger.warning("--on-alarm command exited with status %d", code)
        self._running = still

    def close(self, wait: float = 0.0) -> None:
        deadline = time.monotonic() + wait
        for process in self._running:
            left = deadline - time.monotonic()
            if left > 0:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=left)
        self._reap()


# -- flagged-frame dump ---------------------------------------------------------------


@dataclass
class _Pending:
    event: Event
    frames: list[tuple[int, Frame]]
    after: int = 0
    onset_time: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class FrameDump:
    """Write each flagged frame with ``context`` frames before and after it to extxyz.

    These are the candidates to send back to DFT (the active-learning step): one file
    per anomaly, ``<source>_<frame>_<severity>.extxyz`` in ``directory``. Every frame's
    comment line carries ``stream_frame`` (its index in the stream), ``offset`` (from
    the flagged frame), ``flagged``, and the event's ``severity``, ``score``,
    ``threshold``, ``detector``, ``alarm_frame``, ``onset_frame`` and ``onset_time``
    (fs: when the instability began, estimated from the frames' times).

    Call ``observe(frame)`` for every frame before the pipeline processes it. The file is
    written once the ``context`` frames after the flagged one have arrived, or at
    ``close()`` if the stream ends first. Writing happens on a background thread, so a
    large dump does not stall ingest; ``close()`` waits for it.

    >>> import os, tempfile, numpy as np
    >>> directory = tempfile.mkdtemp()
    >>> dump = FrameDump(directory, context=2)
    >>> for i in range(8):
    ...     dump.observe(Frame(np.full((1, 3), float(i)), [29], step=i, time=2.0 * i, source="md"))
    ...     if i == 4:
    ...         dump.emit(Event("anomaly", 4, 4, 8.0, "md", "zscore", 40.0, 8.0, "critical",
    ...                         onset_frame=3))
    >>> dump.close()
    >>> [os.path.basename(p) for p in dump.written]
    ['md_000004_critical.extxyz']
    >>> text = dump.written[0].read_text()
    >>> text.count("Properties="), "flagged=T" in text, "onset_time=6.0" in text
    (5, True, True)
    """

    def __init__(self, directory: str | Path, *, context: int = 10) -> None:
        if context < 0:
            raise ValueError(f"context must be >= 0, not {context}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.context = context
        self.written: list[Path] = []
        self._rings: dict[str, deque[tuple[int, Frame]]] = {}
        self._counts: dict[str, int] = {}
        self._pending: dict[str, list[_Pending]] = {}
        self._queue: queue.Queue[tuple[Path, list[Frame]] | None] = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="trajwatch-dump")
        self._writer.daemon = True
        self._writer.start()
        self._error: BaseException | None = None

    def observe(self, frame: Frame) -> None:
        source = frame.source
        index = self._counts.get(source, 0)
        self._counts[source] = index + 1
        pending = self._pending.get(source)
        if pending:
            for item in pending:
                item.frames.append((index, frame))
                item.after += 1
            done = [item for item in pending if item.after >= self.context]
            for item in done:
                pending.remove(item)
                self._submit(item)
        ring = self._rings.get(source)
        if ring is None:
            ring = self._rings[source] = deque(maxlen=self.context + 1)
        ring.append((index, frame))

    def emit(self, event: Event) -> None:
        if event.event != "anomaly":
            return
        ring = self._rings.get(event.source)
        if not ring:
            logger.warning("frame dump: no frames seen for source %r", event.source)
            return
        frames = [(i, f) for i, f in ring if i <= event.frame]
        item = _Pending(event, frames, onset_time=_onset_time(event, frames))
        if self.context == 0:
            self._submit(item)
        else:
            self._pending.setdefault(event.source, []).append(item)

    def close(self) -> None:
        """Write what is still waiting for its after-frames, and wait for the writer."""
        for pending in self._pending.values():
            for item in pending:
                self._submit(item)
        self._pending.clear()
        self._queue.put(None)
        self._writer.join()
        if self._error is not None:
            raise OSError(f"frame dump failed: {self._error}") from self._error

    def _submit(self, item: _Pending) -> None:
        event = item.event
        name = f"{_safe(event.source) or 'stream'}_{event.frame:06d}_{event.severity}.extxyz"
        path = self.directory / name
        common: dict[str, Any] = {
            "event": event.event,
            "severity": event.severity,
            "score": event.score,
            "threshold": event.threshold,
            "detector": event.detector,
            "alarm_frame": event.frame,
        }
        if event.onset_frame is not None:
            common["onset_frame"] = event.onset_frame
        if item.onset_time is not None:
            common["onset_time"] = item.onset_time
        if event.atoms:
            common["atoms"] = list(event.atoms)
        if event.features:
            common["features"] = " ".join(f.name for f in event.features)
        frames = []
        for index, frame in item.frames:
            info = dict(frame.info)
            info.update(common)
            offset = index - event.frame
            info.update(stream_frame=index, offset=offset, flagged=offset == 0)
            frames.append(_with_info(frame, info))
        self.written.append(path)
        self._queue.put((path, frames))

    def _write_loop(self) -> None:
        from trajwatch.replay.xyz import write_extxyz

        while True:
            job = self._queue.get()
            if job is None:
                return
            path, frames = job
            try:
                write_extxyz(path, frames)
            except Exception as error:  # reported by close()
                logger.warning("frame dump: cannot write %s: %s", path, error)
                self._error = error


def _onset_time(event: Event, frames: list[tuple[int, Frame]]) -> float | None:
    """Simulation time of the onset frame: read off the frames kept, or extrapolated."""
    onset = event.frame if event.onset_frame is None else event.onset_frame
    timed = [(i, f.time) for i, f in frames if f.time is not None]
    for index, t in timed:
        if index == onset:
            return t
    if len(timed) >= 2 and timed[-1][0] > timed[0][0]:
        (i0, t0), (i1, t1) = timed[0], timed[-1]
        return t1 - (i1 - onset) * (t1 - t0) / (i1 - i0)
    return None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")


def _with_info(frame: Frame, info: dict[str, Any]) -> Frame:
    return Frame(
        frame.positions, frame.numbers, velocities=frame.velocities, forces=frame.forces,
        energy=frame.energy, cell=frame.cell, pbc=frame.pbc, step=frame.step,
        time=frame.time, seq=frame.seq, source=frame.source, info=info, copy=False,
        wall_time=frame.wall_time,
    )  # fmt: skip
