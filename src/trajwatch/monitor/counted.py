"""A trajectory file opened for reading with its progress in bytes of the file on disk.

``scan`` shows a progress bar per file: :func:`open_counted` decompresses gzip, bzip2
and xz (recognised by their magic bytes, as the reader does) and counts the bytes
taken from the file itself, so the bar ends at the file's size, compressed or not.

>>> import gzip, os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "a.xyz.gz")
>>> with gzip.open(path, "wt") as f:
...     _ = f.write("1\\n\\nAr 0 0 0\\n" * 1000)
>>> with open_counted(path) as stream:
...     text = stream.read()
...     len(text), stream.bytes_read == stream.size == os.path.getsize(path)
(12000, True)
>>> stream.name == path
True
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
from types import TracebackType
from typing import IO, Any, cast

__all__ = ["CountedStream", "open_counted"]


class _Counter(io.RawIOBase):
    """The raw file, counting the bytes read from it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.raw.readinto(buffer)  # type: ignore[attr-defined]
        self.count += n or 0
        return n  # type: ignore[no-any-return]

    def close(self) -> None:
        self.raw.close()
        super().close()


class CountedStream(io.RawIOBase):
    """Binary, decompressed view of a file; ``bytes_read`` of ``size`` bytes consumed."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.name = os.fspath(path)
        raw = open(self.name, "rb", buffering=0)  # noqa: SIM115 (closed by close())
        self.size = os.fstat(raw.fileno()).st_size
        magic = raw.read(6)
        raw.seek(0)
        self._counter = _Counter(raw)
        counter = cast(IO[bytes], self._counter)
        inner: Any  # a GzipFile, BZ2File or LZMAFile around the counter, or the counter
        if magic[:2] == b"\x1f\x8b":
            inner = gzip.GzipFile(fileobj=counter, mode="rb")
        elif magic[:3] == b"BZh":
            inner = bz2.BZ2File(counter, mode="rb")
        elif magic[:6] == b"\xfd7zXZ\x00":
            inner = lzma.LZMAFile(counter, mode="rb")  # noqa: SIM115
        else:
            inner = self._counter
        self._inner = inner

    @property
    def bytes_read(self) -> int:
        return self._counter.count

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n: int = self._inner.readinto(buffer)
        return n

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
            self._counter.close()
        super().close()

    def __enter__(self) -> CountedStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_counted(path: str | os.PathLike[str]) -> CountedStream:
    """Open ``path`` (plain, .gz, .bz2 or .xz) for streaming, counting file bytes."""
    return CountedStream(path)
