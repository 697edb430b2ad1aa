"""Single key presses from the terminal, without waiting and without echo.

On a TTY, :class:`KeyReader` puts stdin in cbreak mode (no line buffering, no echo;
Ctrl-C still raises KeyboardInterrupt) and restores the terminal when it closes, even
after an exception. Anywhere else (a pipe, a test, Windows) it reads nothing.

>>> with KeyReader(stream=None) as keys:
...     keys.poll(), keys.active
(None, False)
"""

from __future__ import annotations

import os
import select
import sys
from types import TracebackType
from typing import IO, Any

__all__ = ["KeyReader"]


class KeyReader:
    """``poll()`` returns the characters typed since the last call, or None."""

    def __init__(self, stream: IO[str] | None = sys.stdin) -> None:
        self._fd: int | None = None
        self._saved: list[Any] | None = None
        try:
            if stream is not None and stream.isatty():
                self._fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            self._fd = None

    @property
    def active(self) -> bool:
        """True while the terminal is in cbreak mode and keys can be read."""
        return self._saved is not None

    def __enter__(self) -> KeyReader:
        if self._fd is None:
            return self
        try:
            import termios
            import tty
        except ImportError:  # not a POSIX terminal
            return self
        try:
            self._saved = termios.tcgetattr(self._fd)
            tty.setcbreak(self._fd)
        except termios.error:
            self._saved = None
        return self

    def poll(self) -> str | None:
        if self._saved is None or self._fd is None:
            return None
        ready, _, _ = select.select([self._fd], [], [], 0)
        if not ready:
            return None
        data = os.read(self._fd, 64)
        return data.decode("utf-8", "replace") if data else None

    def close(self) -> None:
        """Restore the terminal (safe to call twice)."""
        saved, self._saved = self._saved, None
        if saved is not None and self._fd is not None:
            import termios

            termios.tcsetattr(self._fd, termios.TCSADRAIN, saved)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
