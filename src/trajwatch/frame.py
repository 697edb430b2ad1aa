"""One MD snapshot as trajwatch sees it.

A :class:`Frame` owns its arrays: it never aliases a receive buffer, a reader's scratch
space or an engine's live state, so a frame kept in a window stays what it was when it
arrived. Units: positions Å, velocities Å/fs, forces eV/Å, energy eV, time fs.
``wall_time`` is when the frame left its producer (seconds since the epoch, from the
wire header), so a receiver can measure end-to-end latency; None when unknown.

>>> import numpy as np
>>> f = Frame(np.zeros((2, 3)), [29, 29], energy=-1.5, step=10)
>>> f.n_atoms, f.numbers.dtype.name, f.energy, f.has_cell
(2, 'int32', -1.5, False)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["Frame", "FrameError"]


class FrameError(ValueError):
    """A frame's arrays do not fit together (shape, dtype or non-finite cell)."""


def _owned(values: ArrayLike, dtype: type, shape: tuple[int, ...], name: str) -> NDArray[Any]:
    array: NDArray[Any] = np.array(values, dtype=dtype, order="C", copy=True)
    if array.shape != shape:
        raise FrameError(f"{name} has shape {array.shape}, expected {shape}")
    return array


class Frame:
    """Positions, atomic numbers and whatever else the engine knows about one step.

    ``copy=False`` is for producers that hand over freshly made arrays of the right
    dtype (readers, decoders); the frame then takes them as they are (a read-only or
    non-contiguous array is copied: the compiled kernels take writable C arrays).
    """

    __slots__ = (
        "cell",
        "energy",
        "forces",
        "info",
        "numbers",
        "pbc",
        "positions",
        "seq",
        "source",
        "step",
        "time",
        "velocities",
        "wall_time",
    )

    positions: NDArray[np.float64]
    numbers: NDArray[np.int32]
    velocities: NDArray[np.float64] | None
    forces: NDArray[np.float64] | None
    energy: float | None
    cell: NDArray[np.float64] | None
    pbc: NDArray[np.bool_]
    step: int
    time: float | None
    seq: int
    source: str
    info: dict[str, Any]
    wall_time: float | None

    def __init__(
        self,
        positions: ArrayLike,
        numbers: ArrayLike,
        *,
        velocities: ArrayLike | None = None,
        forces: ArrayLike | None = None,
        energy: float | None = None,
        cell: ArrayLike | None = None,
        pbc: ArrayLike | None = None,
        step: int = 0,
        time: float | None = None,
        seq: int = 0,
        source: str = "",
        info: Mapping[str, Any] | None = None,
        copy: bool = True,
        wall_time: float | None = None,
    ) -> None:
        if copy or not _is_exact(positions, np.float64, 2):
            positions = np.array(positions, dtype=np.float64, order="C", copy=True)
        pos: NDArray[np.float64] = positions  # type: ignore[assignment]
        if pos.ndim != 2 or pos.shape[1] != 3:
            raise FrameError(f"positions has shape {pos.shape}, expected (n_atoms, 3)")
        n = pos.shape[0]
        self.positions = pos
        if copy or not _is_exact(numbers, np.int32, 1):
            numbers = np.array(numbers, dtype=np.int32, copy=True)
        nums: NDArray[np.int32] = numbers  # type: ignore[assignment]
        if nums.shape != (n,):
            raise FrameError(f"numbers has shape {nums.shape}, expected ({n},)")
        self.numbers = nums
        self.velocities = None
        if velocities is not None:
            self.velocities = _take(velocities, (n, 3), "velocities", copy)
        self.forces = None
        if forces is not None:
            self.forces = _take(forces, (n, 3), "forces", copy)
        self.energy = None if energy is None else float(energy)
        self.cell = None
        if cell is not None:
            c = _take(cell, (3, 3), "cell", copy)
            if not all(map(math.isfinite, c.ravel().tolist())):  # 5x faster than np.isfinite
                raise FrameError("cell has non-finite entries")
            self.cell = c
        if pbc is None:
            self.pbc = _default_pbc(self.cell)
        else:
            flags = np.array(pbc, dtype=np.bool_).reshape(-1)
            if flags.shape == (1,):
                flags = np.repeat(flags, 3)
            if flags.shape != (3,):
                raise FrameError(f"pbc has shape {flags.shape}, expected (3,)")
            self.pbc = flags
        self.step = int(step)
        self.time = None if time is None else float(time)
        self.seq = int(seq)
        self.source = str(source)
        self.info = dict(info) if info else {}
        self.wall_time = None if wall_time is None else float(wall_time)

    @classmethod
    def _from_owned(
        cls,
        positions: NDArray[np.float64],
        numbers: NDArray[np.int32],
        velocities: NDArray[np.float64] | None,
        forces: NDArray[np.float64] | None,
        energy: float | None,
        cell: NDArray[np.float64] | None,
        pbc: NDArray[np.bool_] | None,
        step: int,
        time: float | None,
        seq: int,
        source: str,
        info: dict[str, Any] | None = None,
        wall_time: float | None = None,
    ) -> Frame:
        """Wrap arrays a decoder or reader has just made and checked: no copies, no checks.

        The caller guarantees what ``__init__`` would check: C-contiguous owned writable
        float64 arrays of consistent shapes, a finite (3, 3) cell, (3,) bool pbc (None:
        ``__init__``'s default); numbers int32. Numbers, cell and pbc may instead be
        read-only and shared by a producer's frames (they seldom change).
        """
        frame = object.__new__(cls)
        frame.positions = positions
        frame.numbers = numbers
        frame.velocities = velocities
        frame.forces = forces
        frame.energy = energy
        frame.cell = cell
        frame.pbc = _default_pbc(cell) if pbc is None else pbc
        frame.step = step
        frame.time = time
        frame.seq = seq
        frame.source = source
        frame.info = info if info is not None else {}
        frame.wall_time = wall_time
        return frame

    @property
    def n_atoms(self) -> int:
        return int(self.positions.shape[0])

    @property
    def has_cell(self) -> bool:
        """True when the frame carries a cell with periodic directions to wrap across."""
        return self.cell is not None and bool(self.pbc.any())

    def __repr__(self) -> str:
        parts = [f"n_atoms={self.n_atoms}", f"step={self.step}", f"seq={self.seq}"]
        if self.source:
            parts.append(f"source={self.source!r}")
        if self.energy is not None:
            parts.append(f"energy={self.energy:.6g}")
        return f"Frame({', '.join(parts)})"


def _is_exact(values: object, dtype: type, ndim: int) -> bool:
    return (
        isinstance(values, np.ndarray)
        and values.dtype == dtype
        and values.ndim == ndim
        and values.flags.c_contiguous
        and values.flags.owndata
        and values.flags.writeable  # the compiled kernels take writable arrays only
    )


def _take(values: ArrayLike, shape: tuple[int, ...], name: str, copy: bool) -> NDArray[Any]:
    if not copy and _is_exact(values, np.float64, len(shape)):
        array: NDArray[Any] = values  # type: ignore[assignment]
        if array.shape != shape:
            raise FrameError(f"{name} has shape {array.shape}, expected {shape}")
        return array
    return _owned(values, np.float64, shape, name)


def _constant(values: list[bool]) -> NDArray[np.bool_]:
    array = np.array(values, dtype=np.bool_)
    array.setflags(write=False)  # shared by many frames, so nobody may change it
    return array


_NO_PBC = _constant([False, False, False])
_ALL_PBC = _constant([True, True, True])


def _default_pbc(cell: NDArray[np.float64] | None) -> NDArray[np.bool_]:
    """Periodic along all three axes with a cell, along none without."""
    return _NO_PBC if cell is None else _ALL_PBC
