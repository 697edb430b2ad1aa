"""Stall detection: a ``stalled`` event when a source goes silent, ``resumed`` when it is back.

A stall is about wall-clock time, which :meth:`Pipeline.process` never sees (it only sees
frames), so the loop that receives frames drives a :class:`StallWatch`: ``seen(frame,
now)`` for every frame, ``check(now)`` on every turn of the loop, including the turns on
which the receive timed out. ``now`` is ``time.monotonic()``.

>>> import numpy as np
>>> from trajwatch.frame import Frame
>>> watch = StallWatch(timeout=5.0)
>>> watch.seen(Frame(np.zeros((1, 3)), [1], step=10, source="md"), now=100.0)
[]
>>> watch.check(now=104.0)
[]
>>> [(e.event, e.source, e.frame, e.step, e.severity) for e in watch.check(now=105.5)]
[('stalled', 'md', 0, 10, 'high')]
>>> watch.check(now=200.0)  # one event per stall, not one per check
[]
>>> [e.message for e in watch.seen(Frame(np.zeros((1, 3)), [1], step=11, seq=1,
...                                      source="md"), now=201.0)]
['md resumed after 101.0 s without frames']
>>> watch.stalls, watch.stalled_seconds
(1, 101.0)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from trajwatch.events import Event
from trajwatch.frame import Frame

__all__ = ["DETECTOR", "SourceClock", "StallWatch", "watch_stalls"]

DETECTOR = "stall"
"""The ``detector`` field of stalled/resumed events."""


@dataclass
class SourceClock:
    """What a :class:`StallWatch` keeps per source."""

    last: float
    """Monotonic time of the last frame."""
    frames: int = 0
    step: int | None = None
    time: float | None = None
    seq: int = 0
    stalled_since: float | None = None
    """``last`` when the source was declared stalled; None while it is live."""
    stalls: int = 0
    stalled_seconds: float = 0.0
    """Total silence of the stalls that have ended (from the last frame before each
    stall to the first one after it)."""


class StallWatch:
    """Raise ``stalled`` after ``timeout`` seconds without a frame from a source.

    One ``stalled`` event per silence (severity ``high``) and one ``resumed`` event
    (``warning``) when the source's next frame arrives, whose message says how long
    the silence was and how many sequence numbers are missing across it. ``stalls``
    and ``stalled_seconds`` add up all sources; per source they are in ``sources``.
    ``check`` costs O(1) until the earliest deadline of any source has passed.
    """

    def __init__(self, timeout: float) -> None:
        if not timeout > 0 or not math.isfinite(timeout):
            raise ValueError(f"stall timeout must be a positive number of seconds, not {timeout}")
        self.timeout = float(timeout)
        self.sources: dict[str, SourceClock] = {}
        self._next_check = math.inf

    @property
    def stalls(self) -> int:
        return sum(clock.stalls for clock in self.sources.values())

    @property
    def stalled_seconds(self) -> float:
        return sum(clock.stalled_seconds for clock in self.sources.values())

    @property
    def stalled(self) -> list[str]:
        """Sources that are silent right now (as of the last ``check``)."""
        return [name for name, c in self.sources.items() if c.stalled_since is not None]

    def seen(self, frame: Frame, now: float) -> list[Event]:
        """Record a frame; a ``resumed`` event if its source was stalled."""
        clock = self.sources.get(frame.source)
        events: list[Event] = []
        if clock is None:
            clock = self.sources[frame.source] = SourceClock(last=now)
        elif clock.stalled_since is not None:
            events.append(self._resumed(frame, clock, now))
        clock.last = now
        clock.frames += 1
        clock.step = frame.step
        clock.time = frame.time
        clock.seq = frame.seq
        if now + self.timeout < self._next_check:
            self._next_check = now + self.timeout
        return events

    def check(self, now: float) -> list[Event]:
        """``stalled`` events for the sources silent for ``timeout`` seconds or more."""
        if now < self._next_check:
            return []
        events: list[Event] = []
        next_check = math.inf
        for name, clock in self.sources.items():
            if clock.stalled_since is not None:
                continue
            deadline = clock.last + self.timeout
            if now >= deadline:
                clock.stalled_since = clock.last
                clock.stalls += 1
                events.append(self._stalled(name, clock, now))
            elif deadline < next_check:
                next_check = deadline
        self._next_check = next_check
        return events

    def _stalled(self, name: str, clock: SourceClock, now: float) -> Event:
        silent = now - clock.last
        return Event(
            "stalled",
            frame=clock.frames - 1,
            step=clock.step,
            time=clock.time,
            source=name,
            detector=DETECTOR,
            score=round(silent, 3),
            threshold=self.timeout,
            severity="high",
            message=f"no frame from {name} for {silent:.1f} s (last step {clock.step})",
        )

    def _resumed(self, frame: Frame, clock: SourceClock, now: float) -> Event:
        assert clock.stalled_since is not None
        silent = now - clock.stalled_since
        clock.stalled_seconds += silent
        clock.stalled_since = None
        if frame.seq > clock.seq + 1:
            gap = f", {frame.seq - clock.seq - 1} frames missing"
        elif frame.seq <= clock.seq:
            gap = ", its publisher restarted"
        else:
            gap = ""
        return Event(
            "resumed",
            frame=clock.frames,
            step=frame.step,
            time=frame.time,
            source=frame.source,
            detector=DETECTOR,
            score=round(silent, 3),
            threshold=self.timeout,
            severity="warning",
            message=f"{frame.source} resumed after {silent:.1f} s without frames{gap}",
        )


def watch_stalls(
    receive: Callable[[float], Frame | None],
    watch: StallWatch,
    emit: Callable[[Event], object],
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[float], Frame | None]:
    """Wrap a ``receive(timeout) -> Frame | None`` (e.g. ``Subscriber.recv``) so that
    every call feeds ``watch`` and hands its events to ``emit``, a ``resumed`` event
    before the frame that ended the silence is returned. A loop that calls it on every
    turn needs no other change.

    >>> import numpy as np
    >>> from trajwatch.frame import Frame
    >>> arrivals = iter([Frame(np.zeros((1, 3)), [1], source="md"), None, None])
    >>> ticks = iter([0.0, 3.0, 9.0])
    >>> receive = watch_stalls(lambda timeout: next(arrivals), StallWatch(5.0), print,
    ...                        clock=lambda: next(ticks))
    >>> [receive(0.1) is not None for _ in range(3)]  # doctest: +ELLIPSIS
    Event(event='stalled', frame=0, ..., message='no frame from md for 9.0 s (last step 0)')
    [True, False, False]
    """

    def receive_watched(timeout: float) -> Frame | None:
        frame = receive(timeout)
        now = clock()
        if frame is not None:
            for event in watch.seen(frame, now):
                emit(event)
        for event in watch.check(now):
            emit(event)
        return frame

    return receive_watched
