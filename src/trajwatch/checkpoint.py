"""Checkpoints: what the detectors learned, saved now and then, restored after a restart.

A monitor that restarts (a crash, ``kill -9``, a reboot) would otherwise learn normal
from scratch: no alarm during its warm-up, only critical ones until its calibration has
settled, and a baseline taken from whatever the run does *now*, a fault in progress
included. A checkpoint keeps, per source, the detector stack (detectors, calibrators,
frame count) and the source's frame index; it is one ``.npz`` (or ``.json``) file in the
format of :mod:`trajwatch.detectors.state` (never pickle), written atomically: a temp
file in the same directory, fsync, ``os.replace``, fsync of the directory, so a crash
leaves the old checkpoint or the new one, never half of one.

On restore, each source's feature window is empty (its frames are gone), so the
restored stack sees its ``warmup_frames`` again, learning from them as a fresh stack
would, before it judges; after that it has the full sensitivity it had before the
restart. The frame index goes on from the checkpoint (frames processed between the last
checkpoint and the crash are counted again).

>>> import os, tempfile
>>> import numpy as np
>>> from trajwatch.pipeline import Pipeline
>>> from trajwatch.simulate import MDSpec, run_md
>>> pipeline = Pipeline()
>>> for frame in run_md(MDSpec(steps=80, repeat=2, source="md")):
...     _ = pipeline.process(frame)
>>> path = save_checkpoint(pipeline, os.path.join(tempfile.mkdtemp(), "ckpt.npz"))
>>> again = Pipeline()
>>> restore_checkpoint(again, load_checkpoint(path))
['md']
>>> before, after = pipeline.sources["md"], again.sources["md"]
>>> x = before.last_features[before.scored]
>>> after.frames, bool(np.array_equal(after.stack.deviations(x), before.stack.deviations(x)))
(80, True)
"""

from __future__ import annotations

import json
import logging
import os
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from trajwatch.detectors import state as state_files
from trajwatch.detectors.base import register
from trajwatch.detectors.stack import DetectorStack
from trajwatch.frame import Frame
from trajwatch.pipeline import Pipeline, SourceWatch

__all__ = [
    "FORMAT",
    "Checkpoint",
    "Checkpointer",
    "load_checkpoint",
    "restore_checkpoint",
    "save_checkpoint",
    "with_checkpoints",
]

FORMAT = "trajwatch-checkpoint/1"
logger = logging.getLogger("trajwatch.checkpoint")


@register
class Checkpoint:
    """Per source: the frame index, the scored feature names and the stack's state."""

    def __init__(self, sources: dict[str, dict[str, Any]], saved: float = 0.0) -> None:
        self.sources = sources
        self.saved = saved
        """Wall-clock time of the save (seconds since the epoch)."""

    @classmethod
    def of(cls, pipeline: Pipeline) -> Checkpoint:
        """The checkpoint of ``pipeline`` as it is now."""
        return cls(
            {
                name: {
                    "frames": watch.frames,
                    "features": list(watch.names),
                    "stack": watch.stack.get_state(),
                }
                for name, watch in pipeline.sources.items()
            },
            saved=time.time(),
        )

    def frames(self) -> dict[str, int]:
        """Frames each source had processed when the checkpoint was made."""
        return {name: int(entry["frames"]) for name, entry in self.sources.items()}

    def get_state(self) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "format": FORMAT,
            "saved": self.saved,
            "sources": self.sources,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Checkpoint:
        if state.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} checkpoint (format {state.get('format')!r})")
        return cls(dict(state["sources"]), saved=float(state.get("saved", 0.0)))


def save_checkpoint(pipeline: Pipeline, path: str | Path) -> Path:
    """Write ``pipeline``'s checkpoint to ``path`` atomically (``.json``, else ``.npz``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the same suffix: it decides the format
    temp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix or '.npz'}")
    try:
        state_files.save(Checkpoint.of(pipeline), temp)
        _fsync(temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync(path.parent)  # the rename itself reaches the disk
    return path


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (``allow_pickle=False``)."""
    path = Path(path)
    if path.suffix != ".json":
        # a damaged .npz makes np.load leak its file handle: check the archive first
        try:
            with zipfile.ZipFile(path) as archive:
                damaged = archive.testzip()
        except zipfile.BadZipFile as exc:
            raise ValueError(f"{path} is not a readable checkpoint: {exc}") from None
        if damaged is not None:
            raise ValueError(f"{path} is damaged ({damaged} fails its CRC check)")
    loaded = state_files.load(path)
    if not isinstance(loaded, Checkpoint):
        raise ValueError(f"{path} holds a {type(loaded).__name__}, not a checkpoint")
    return loaded


def restore_checkpoint(pipeline: Pipeline, checkpoint: Checkpoint) -> list[str]:
    """Install the checkpoint's sources in ``pipeline``; the names restored.

    A source whose features or detector settings differ from what ``pipeline`` would
    build now is left out (it starts fresh), with a WARNING on ``trajwatch.checkpoint``.
    """
    restored = []
    for name, entry in checkpoint.sources.items():
        watch = SourceWatch(name, pipeline.config, pipeline.reference, pipeline.lstm)
        if list(entry["features"]) != list(watch.names):
            logger.warning("checkpoint of %r has other features; it starts afresh", name)
            continue
        if _plain(entry["stack"]["config"]) != _plain(asdict(watch.stack.config)):
            logger.warning(
                "checkpoint of %r was made with other detector settings; it starts afresh", name
            )
            continue
        stack = DetectorStack.from_state(entry["stack"])
        stack.frames = 0  # the feature window refills: run the warm-up again (see above)
        watch.stack = stack
        watch.frames = int(entry["frames"])
        pipeline.sources[name] = watch
        restored.append(name)
    return restored


def _plain(tree: Any) -> Any:
    """Tuples as lists, as they come back from a state file."""
    return json.loads(json.dumps(tree))


class Checkpointer:
    """Saves ``pipeline`` to ``path`` every ``every`` seconds (when it has changed).

    ``restore()`` at start; ``maybe_save()`` on every turn of the receive loop (cheap
    until a save is due); ``save()`` once more at a clean exit. A checkpoint that cannot
    be read is reported and ignored: a monitor that will not start is worse than one
    that has to learn again.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        path: str | Path,
        every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not every > 0:
            raise ValueError(f"checkpoint interval must be positive, not {every}")
        self.pipeline = pipeline
        self.path = Path(path)
        self.every = float(every)
        self.clock = clock
        self.saves = 0
        self.failures = 0
        self._due = clock() + self.every
        self._saved_frames: dict[str, int] = {}

    def restore(self) -> list[str]:
        """Restore from ``path`` if it exists; the sources restored."""
        if not self.path.exists():
            return []
        try:
            checkpoint = load_checkpoint(self.path)
            restored = restore_checkpoint(self.pipeline, checkpoint)
        except Exception as exc:  # any unreadable file: say so, and learn afresh
            logger.warning(
                "cannot restore the checkpoint %s (%s); starting afresh", self.path, exc
            )
            return []
        self._saved_frames = {name: self.pipeline.sources[name].frames for name in restored}
        return restored

    def maybe_save(self) -> bool:
        """Save if the interval has passed and frames came since the last save."""
        now = self.clock()
        if now < self._due:
            return False
        self._due = now + self.every
        return self.save()

    def save(self) -> bool:
        """Save now (if anything changed); False if nothing to save or the save failed."""
        frames = {name: watch.frames for name, watch in self.pipeline.sources.items()}
        if not frames or frames == self._saved_frames:
            return False
        try:
            save_checkpoint(self.pipeline, self.path)
        except OSError as exc:  # a full disk must not stop the monitoring
            self.failures += 1
            logger.warning("cannot write the checkpoint %s: %s", self.path, exc)
            return False
        self._saved_frames = frames
        self.saves += 1
        return True


def with_checkpoints(
    receive: Callable[[float], Frame | None], checkpointer: Checkpointer
) -> Callable[[float], Frame | None]:
    """Wrap a ``receive(timeout)`` so every call gives ``checkpointer`` a chance to save
    (between frames, never in the middle of one)."""

    def receive_and_checkpoint(timeout: float) -> Frame | None:
        checkpointer.maybe_save()
        return receive(timeout)

    return receive_and_checkpoint
