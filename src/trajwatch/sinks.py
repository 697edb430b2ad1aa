"""Where events go: a JSON-lines log on disk, a text stream, or any callable.

Every sink has ``emit(event)`` and ``close()``. The JSONL sink writes and flushes each
event as it is raised (``fsync=True`` also forces it to the disk), so an alarm that was
emitted is in the log even if the monitor is killed right after.

>>> import io
>>> from trajwatch.events import Event
>>> out = io.StringIO()
>>> sink = StreamSink(out)
>>> sink.emit(Event("info", 0, 0, None, "run", "pipeline", 0.0, 0.0, "warning", message="hi"))
>>> out.getvalue().startswith('{"event":"info"')
True
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Protocol

from trajwatch.events import Event

__all__ = ["CallbackSink", "JsonlSink", "Sink", "StreamSink"]


class Sink(Protocol):
    def emit(self, event: Event) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """Append events to a JSON-lines file, one flushed line per event."""

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
    """Call a function with each event (e.g. to stop the engine on an alarm)."""

    def __init__(self, callback: Callable[[Event], object]) -> None:
        self.callback = callback

    def emit(self, event: Event) -> None:
        self.callback(event)

    def close(self) -> None:
        pass
