"""Build and send an engine's frames on a thread of their own.

An engine's reporting hook hands over a snapshot it already owns (OpenMM's ``State``)
with :meth:`BackgroundSender.put`, a deque append; the thread turns it into a Frame and
sends it. Engines that release the GIL while they step (OpenMM does) then pay almost
nothing per report on their own thread. The machine needs a free core for the thread.

>>> from trajwatch.frame import Frame
>>> class Keep:
...     def __init__(self):
...         self.frames = []
...     def send(self, frame):
...         self.frames.append(frame)
...         return True
>>> keep = Keep()
>>> sender = BackgroundSender(keep, lambda step: Frame([[0.0, 0, 0]], [18], step=step))
>>> for step in range(3):
...     _ = sender.put(step)
>>> sender.close()
True
>>> [f.step for f in keep.frames], sender.sent, sender.dropped
([0, 1, 2], 3, 0)
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from trajwatch.adapters.inprocess import FrameTarget
from trajwatch.frame import Frame

__all__ = ["BackgroundSender"]

logger = logging.getLogger("trajwatch.adapters")

#: the thread's naps when it has caught up (s): short while frames flow, longer when idle
_NAP_MIN, _NAP_MAX = 0.0002, 0.005


class BackgroundSender:
    """A thread that calls ``target.send(build(item))`` for each item :meth:`put` queues.

    At most ``max_pending`` items wait. When that many do, :meth:`put` drops the new item
    (counted in ``dropped``) if the target may drop frames anyway (a Publisher in its
    default mode), else it waits for room (a lossless Publisher, a Watch). If ``build``
    or ``send`` raises, the thread stops and the next :meth:`put` or :meth:`flush` raises
    RuntimeError from that error. Not thread-safe: one engine thread puts.
    """

    def __init__(
        self,
        target: FrameTarget,
        build: Callable[[Any], Frame],
        *,
        max_pending: int = 256,
        name: str = "trajwatch-sender",
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, not {max_pending}")
        self.target = target
        self.max_pending = max_pending
        self.may_drop = not bool(getattr(target, "lossless", True))
        self.sent = 0
        self.dropped = 0
        self.error: BaseException | None = None
        self._build = build
        self._pending: deque[Any] = deque()
        self._queued = 0  # items put and not dropped; ``sent`` of them are sent
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item: Any) -> bool:
        """Queue ``item``; False if it was dropped (the queue was full)."""
        if self.error is not None or not self._thread.is_alive():
            self._raise()
        pending = self._pending
        if len(pending) >= self.max_pending:
            if self.may_drop:
                self.dropped += 1
                return False
            while len(pending) >= self.max_pending:  # a lossless target: the engine waits
                if not self._thread.is_alive():
                    self._raise()
                time.sleep(_NAP_MIN)
        pending.append(item)  # atomic: the thread pops from the other end
        self._queued += 1
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued item is sent; False after ``timeout`` s (None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.sent < self._queued:
            if not self._thread.is_alive():
                self._raise()
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(_NAP_MIN)
        return True

    def close(self, timeout: float | None = None) -> bool:
        """Send what is queued (within ``timeout`` s), then stop the thread; True if all
        of it was sent."""
        flushed = self.flush(timeout)
        self._closing = True
        self._thread.join(timeout)
        return flushed

    @property
    def pending(self) -> int:
        """Items queued and not yet sent."""
        return self._queued - self.sent

    def _raise(self) -> None:
        raise RuntimeError("the background sender has stopped") from self.error

    def _run(self) -> None:
        pending = self._pending
        nap = _NAP_MIN
        while True:
            if not pending:
                if self._closing:
                    return
                time.sleep(nap)  # the engine is between reports: back off
                nap = min(nap * 2, _NAP_MAX)
                continue
            nap = _NAP_MIN
            item = pending.popleft()
            try:
                self.target.send(self._build(item))
            except BaseException as error:
                self.error = error
                logger.exception("trajwatch background sender failed")
                return
            self.sent += 1
