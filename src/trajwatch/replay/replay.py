"""Replay archived trajectories into a socket at a chosen rate, as if an engine ran.

>>> import tempfile, os
>>> from trajwatch.simulate import MDSpec, run_md, write_with_ase
>>> from trajwatch.streaming import Publisher, Subscriber
>>> path = os.path.join(tempfile.mkdtemp(), "a.extxyz")
>>> path = write_with_ase(run_md(MDSpec(steps=3, repeat=2)), path)
>>> with Subscriber("tcp://127.0.0.1:0", bind=True, lossless=True) as sub, \\
...      Publisher(sub.endpoint, bind=False, lossless=True) as pub:
...     stats = replay([path], pub, rate=None)
...     got = [sub.recv(timeout=5.0) for _ in range(stats.frames)]
>>> stats.frames, [f.step for f in got]
(3, [0, 1, 2])
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from trajwatch.frame import Frame
from trajwatch.replay.xyz import XYZReader
from trajwatch.streaming import Publisher

__all__ = ["ReplayStats", "iter_files", "replay"]


@dataclass
class ReplayStats:
    """What a replay sent: frames offered, dropped at the high-water mark, bad frames."""

    frames: int = 0
    dropped: int = 0
    bad_frames: int = 0
    seconds: float = 0.0

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (
            f"replayed {self.frames} frames in {self.seconds:.2f} s "
            f"({self.frames_per_second:,.0f} frames/s), dropped {self.dropped}, "
            f"bad {self.bad_frames}"
        )


def iter_files(
    paths: Sequence[str | Path], *, skip_bad: bool = False, stats: ReplayStats | None = None
) -> Iterator[Frame]:
    """Frames of each file in turn, streamed; bad frames are counted into ``stats``."""
    for path in paths:
        with XYZReader(path, skip_bad=skip_bad) as reader:
            yield from reader
            if stats is not None:
                stats.bad_frames += reader.bad_frames


def replay(
    paths: Sequence[str | Path],
    publisher: Publisher,
    *,
    rate: float | None = 100.0,
    loop: bool = False,
    skip_bad: bool = False,
    max_frames: int | None = None,
) -> ReplayStats:
    """Send the frames of ``paths`` through ``publisher``; ``rate=None`` sends flat out.

    The schedule is absolute (frame k goes out at start + k / rate), so sleeping late once
    does not slow the whole replay down.
    """
    stats = ReplayStats()
    period = 1.0 / rate if rate else 0.0
    start = time.perf_counter()
    while True:
        for frame in iter_files(paths, skip_bad=skip_bad, stats=stats):
            if period:
                delay = start + stats.frames * period - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            if not publisher.send(frame):
                stats.dropped += 1
            stats.frames += 1
            if max_frames is not None and stats.frames >= max_frames:
                stats.seconds = time.perf_counter() - start
                return stats
        if not loop or stats.frames == 0:
            break
    stats.seconds = time.perf_counter() - start
    return stats
