"""The loops: ingest (receive -> pipeline -> state) and the view that redraws on its own.

:func:`ingest` runs in the caller's thread and never waits for the screen: once per
``1/refresh`` seconds it hands an immutable snapshot to the :class:`LiveView`, whose own
thread draws the latest one (at most ``refresh`` times a second) and watches for ``q``.
A slow terminal therefore delays the picture, never the frames.

>>> import numpy as np
>>> from trajwatch.frame import Frame
>>> from trajwatch.pipeline import Pipeline
>>> from trajwatch.monitor.state import MonitorState
>>> frames = iter([Frame(np.zeros((2, 3)) + [[0, 0, 0], [2.5, 0, 0]], [29, 29], source="a")])
>>> state = MonitorState()
>>> ingest(lambda timeout: next(frames, None), Pipeline(), state, idle_timeout=0.0)
'idle'
>>> state.snapshot().frames
1
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from rich.console import Console
from rich.live import Live

from trajwatch.frame import Frame
from trajwatch.monitor.keys import KeyReader
from trajwatch.monitor.render import render
from trajwatch.monitor.state import MonitorState, Snapshot
from trajwatch.pipeline import Pipeline

__all__ = ["FrameObserver", "LiveView", "StateLogHandler", "ingest"]

Receive = Callable[[float], "Frame | None"]

BATCH = 64
"""Most frames taken off the socket at once when they queue up (with the LSTM on)."""


class FrameObserver(Protocol):
    """Sees every frame before the pipeline does (the flagged-frame dump keeps context)."""

    def observe(self, frame: Frame) -> None: ...


def ingest(
    receive: Receive,
    pipeline: Pipeline,
    state: MonitorState,
    *,
    view: LiveView | None = None,
    observers: Sequence[FrameObserver] = (),
    max_frames: int | None = None,
    idle_timeout: float | None = None,
    should_stop: Callable[[], bool] | None = None,
    poll: float = 0.1,
) -> str:
    """Receive and process frames until a stop condition; returns why it stopped.

    ``receive(timeout)`` returns the next frame or None (e.g. ``Subscriber.recv``).
    Stops on ``max_frames``, after ``idle_timeout`` seconds without a frame (counted from
    the last frame, or from the start if none came), when ``should_stop()`` says so while
    the stream is quiet, or on ``q`` in the view: ``"max-frames"``, ``"idle"``,
    ``"stopped"``, ``"quit"``. Ctrl-C (KeyboardInterrupt) propagates to the caller.
    """
    frames = 0
    period = 1.0 / view.refresh if view is not None else 0.0
    next_show = 0.0
    last = time.monotonic()
    now_wall = time.time
    now_mono = time.monotonic
    while True:
        frame = receive(poll)
        now = now_mono()
        if frame is not None:
            batch = [frame]
            if pipeline.batches:  # frames that queued up meanwhile: score them in one batch
                cap = BATCH if max_frames is None else min(BATCH, max_frames - frames)
                while len(batch) < cap and (more := receive(0.0)) is not None:
                    batch.append(more)
                pipeline.prefetch(batch)
            wall = now_wall()
            for frame in batch:
                for observer in observers:
                    observer.observe(frame)
                events = pipeline.process(frame)
                state.observe(frame, pipeline.sources[frame.source], events, wall=wall, now=now)
            frames += len(batch)
            last = now
            if max_frames is not None and frames >= max_frames:
                return "max-frames"
        else:
            if idle_timeout is not None and now - last >= idle_timeout:
                return "idle"
            if should_stop is not None and should_stop():
                return "stopped"
        if view is not None and now >= next_show:
            next_show = now + period
            view.show(state.snapshot(now))
            if view.quit_requested:
                return "quit"


class LiveView:
    """Draws the latest snapshot in a rich ``Live`` on its own thread; ``q`` asks to quit.

    ``refresh`` caps the redraws per second. Use as a context manager, or ``start()`` and
    ``stop(final)``: the final snapshot is drawn once more and left on the screen.
    """

    def __init__(
        self,
        console: Console | None = None,
        *,
        refresh: float = 4.0,
        keys: KeyReader | None = None,
    ) -> None:
        if not refresh > 0:
            raise ValueError(f"refresh must be positive, not {refresh}")
        self.console = console or Console()
        self.refresh = min(refresh, 4.0)
        self.keys = keys if keys is not None else KeyReader()
        self.draws = 0
        self._latest: Snapshot | None = None
        self._final: Snapshot | None = None
        self._quit = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def quit_requested(self) -> bool:
        return self._quit.is_set()

    def show(self, snapshot: Snapshot) -> None:
        """Hand over a snapshot (an assignment: never waits for the drawing).

        Raises RuntimeError if the drawing thread has failed, so a broken view ends the
        run at once instead of leaving it blind.
        """
        error, self._error = self._error, None
        if error is not None:
            raise RuntimeError("the live view failed") from error
        self._latest = snapshot

    def start(self) -> LiveView:
        self.keys.__enter__()
        self._thread = threading.Thread(target=self._run, name="trajwatch-view", daemon=True)
        self._thread.start()
        return self

    def stop(self, final: Snapshot | None = None) -> None:
        """Draw ``final`` (if given), stop the thread and restore the terminal."""
        self._final = final
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self.keys.close()
        error, self._error = self._error, None
        if error is not None:
            raise RuntimeError("the live view failed") from error

    def __enter__(self) -> LiveView:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(self._latest)

    def _draw(self, live: Live, snapshot: Snapshot) -> None:
        width, height = self.console.size
        live.update(render(snapshot, width=width, height=height - 1), refresh=True)
        self.draws += 1

    def _run(self) -> None:
        period = 1.0 / self.refresh
        drawn: Snapshot | None = None
        next_draw = 0.0
        try:
            with Live(
                console=self.console,
                auto_refresh=False,
                transient=False,
                redirect_stdout=False,
                redirect_stderr=False,
                vertical_overflow="crop",
            ) as live:
                while not self._stop.wait(0.05):
                    key = self.keys.poll()
                    if key is not None and ("q" in key or "Q" in key):
                        self._quit.set()
                    snapshot = self._latest
                    now = time.monotonic()
                    if snapshot is not None and snapshot is not drawn and now >= next_draw:
                        self._draw(live, snapshot)
                        drawn = snapshot
                        next_draw = now + period
                if self._final is not None:
                    self._draw(live, self._final)
        except BaseException as error:  # reported by stop(), in the caller's thread
            self._error = error


class StateLogHandler(logging.Handler):
    """Shows log records in the view (instead of writing over it on stderr)."""

    def __init__(self, state: MonitorState, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self.state = state

    def emit(self, record: logging.LogRecord) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        self.state.message(f"{stamp} {record.levelname.lower()}: {record.getMessage()}")
