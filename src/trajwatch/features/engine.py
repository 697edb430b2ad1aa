"""The feature engine: one :class:`~trajwatch.frame.Frame` in, one named feature vector out.

Every frame costs O(N) plus O(1) merges of per-frame summaries (on average): the engine keeps ring
buffers of the last W frames and never recomputes a window. One Numba call per frame.

>>> import numpy as np
>>> from trajwatch.frame import Frame
>>> engine = FeatureEngine()
>>> cell = np.eye(3) * 5.0
>>> x0 = engine.update(Frame([[0, 0, 0], [2.5, 0, 0]], [29, 29], cell=cell, energy=-6.0))
>>> x1 = engine.update(Frame([[4.9, 0, 0], [2.5, 0, 0]], [29, 29], cell=cell, energy=-6.0))
>>> float(x1[engine.names.index("step_disp_max")].round(3))  # 0 -> 4.9 across the boundary
0.1
>>> engine.update(Frame([[0, 0, 0]], [29], cell=cell)) is not None, engine.structure_change
(True, 'atom count changed from 2 to 1 (Cu2 -> Cu1)')
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from trajwatch.elements import MASSES, SYMBOLS
from trajwatch.features import _kernels_update as kern
from trajwatch.features.catalogue import FEATURE_NAMES, lag_set
from trajwatch.features.reference import tagged_atoms
from trajwatch.frame import Frame

__all__ = ["FEATURE_NAMES", "Attribution", "FeatureEngine", "warmup"]

_EMPTY3 = np.empty((0, 3))
_EYE = np.eye(3)
_N_FEATURES = kern.N_FEATURES
_empty = np.empty
_update = kern._update
assert kern.OK == 0  # update() tests the status for truth


@dataclass(frozen=True)
class Attribution:
    """Which atoms explain the latest frame's features."""

    moved_most: NDArray[np.intp]
    """Indices of the atoms with the largest displacement, largest first (for a frame with
    non-finite positions: the atoms that are not finite)."""
    closest_pair: tuple[int, int]
    """The two atoms at the minimum interatomic distance (-1, -1 if undefined)."""


class FeatureEngine:
    """Per-source feature state: feed frames in order with :meth:`update`.

    ``window`` frames are kept (W >= 4). MSD, VACF and the RDF use every s-th atom,
    s = ceil(N / ``sample_atoms``), so their cost stops growing past that many atoms. The
    RDF, the expensive one (pairs within ``rdf_cutoff`` Å in ``rdf_bins`` bins), is spread
    out: each frame counts the pairs of 1/``rdf_stride`` of its centres. ``skin`` (Å) is
    the Verlet-list margin the lists start with; each widens its own while atoms move
    fast enough to make it stale within 100 frames, and narrows back once they calm.
    Formulas and algorithms: ``docs/features.md``.

    After :meth:`update`, :attr:`structure_change` says what changed if the atom count or
    the species differ from the previous frame (the window state was reset), else None.
    """

    def __init__(
        self,
        window: int = 50,
        top_atoms: int = 5,
        *,
        sample_atoms: int = 250,
        rdf_stride: int = 20,
        rdf_cutoff: float = 5.0,
        rdf_bins: int = 100,
        skin: float = 0.5,
    ) -> None:
        if window < 4:
            raise ValueError(f"window must be at least 4 frames, not {window}")
        if top_atoms < 0 or sample_atoms < 1 or rdf_stride < 1 or rdf_bins < 1:
            raise ValueError("top_atoms >= 0, sample_atoms >= 1, rdf_stride >= 1, rdf_bins >= 1")
        if not (rdf_cutoff > 0 and skin > 0 and math.isfinite(rdf_cutoff + skin)):
            raise ValueError(f"rdf_cutoff and skin must be positive, not {rdf_cutoff}, {skin}")
        self.window = window
        self.top_atoms = top_atoms
        self.sample_atoms = sample_atoms
        self.rdf_stride = rdf_stride
        self.rdf_cutoff = float(rdf_cutoff)
        self.rdf_bins = rdf_bins
        self.skin = float(skin)
        self.names: tuple[str, ...] = FEATURE_NAMES
        self.lags = lag_set(window)
        """The MSD/VACF lags (``catalogue.lag_set(window)``)."""
        self.structure_change: str | None = None
        self._numbers: NDArray[np.int32] | None = None
        self._last: Frame | None = None
        # writable copies of the latest read-only numbers, pbc and cell a frame brought
        # (and those arrays themselves, to know them again): producers share one of each
        # among their frames, and copying them every frame cost ~0.2 us each at 100 atoms
        self._shared_numbers = self._numbers_copy = np.empty(0, dtype=np.int32)
        self._shared_pbc = self._pbc_copy = np.empty(0, dtype=np.bool_)
        self._shared_cell = self._cell_copy = np.empty((0, 3))
        self._state: tuple[Any, ...] = ()
        self._allocate(0)

    # ------------------------------------------------------------------ state

    def _allocate(self, n: int) -> None:
        """Preallocate every buffer for ``n`` atoms; nothing is allocated per frame.

        The state lives in three flat arrays (float64, int64, int32: one kernel argument
        each) that ``_kernels_update._carve`` cuts into the named views below.
        """
        w = self.window
        tagged = tagged_atoms(n, self.sample_atoms)
        m = len(tagged)
        lags = lag_set(w)
        work = max(w, 16)
        floats, ints, int32s = kern.state_sizes(n, m, w, len(lags), self.rdf_bins, work)
        self._fstate = np.zeros(floats)
        self._istate = np.zeros(ints, dtype=np.int64)
        self._i32state = np.zeros(int32s, dtype=np.int32)
        self._istate[: kern.N_SIZES] = (n, m, w, len(lags), self.rdf_bins, work)
        (
            self._ibuf, self._fbuf, self._geom, self._atoms, self._disp, self._masses,
            self._numbers0, self._tagged, self.lags, self._ring, self._ring_u, self._ring_v,
            self._ring_bins, self._hist, self._rdf_ring, self._rstart, self._work, self._acc,
        ) = kern._carve(self._fstate, self._istate, self._i32state)  # fmt: skip
        self._tagged[:] = tagged
        self.lags[:] = lags
        self._geom[kern.G_EYE] = np.eye(3)
        self._cpairs = np.zeros((8 * n + 16, 2), dtype=np.int64)
        self._cshift = np.zeros((8 * n + 16, 3))
        self._rpairs = np.zeros((64 * m + 16, 2), dtype=np.int64)
        self._rshift = np.zeros((64 * m + 16, 3))
        self._dft = np.zeros((3, w), dtype=np.complex128)
        self._dft[2] = np.exp(-2j * np.pi * np.arange(w) / w)
        self._pack()
        self._n = n
        self.reset()

    def _pack(self) -> None:
        self._state = (
            self._fstate, self._istate, self._i32state, self._dft, self._cpairs, self._cshift,
            self._rpairs, self._rshift,
        )  # fmt: skip

    def reset(self) -> None:
        """Forget all history: the next frame starts a new segment (no change reported)."""
        self._ibuf[:] = 0
        self._ibuf[kern.I_NCONTACT] = -1
        self._ibuf[kern.I_NRDF] = -1
        self._ibuf[kern.I_CLOSEST_I] = -1
        self._ibuf[kern.I_CLOSEST_J] = -1
        self._ibuf[kern.I_RDF_STRIDE] = self.rdf_stride
        self._fbuf[:] = math.nan
        self._fbuf[kern.F_SKIN] = self.skin
        self._fbuf[kern.F_CONTACT_SKIN] = self.skin
        self._fbuf[kern.F_RDF_SKIN] = 2.0 * self.skin
        self._fbuf[kern.F_RDF_CUTOFF] = self.rdf_cutoff
        self._hist[:] = 0
        self._rdf_ring[:] = 0.0
        self._dft[:2] = 0
        self._numbers = None
        self._last = None

    def _start(self, frame: Frame) -> None:
        """Begin a segment with ``frame``'s atoms."""
        n = frame.n_atoms
        if n != self._n:
            self._allocate(n)
        else:
            self.reset()
        numbers = frame.numbers
        self._numbers = numbers
        self._numbers0[:] = numbers
        known = (numbers >= 0) & (numbers < len(MASSES))
        self._masses[:] = np.where(known, MASSES[np.where(known, numbers, 0)], math.nan)

    # ---------------------------------------------------------------- updates

    def update(self, frame: Frame) -> NDArray[np.float64]:
        """Features of ``frame`` given the frames before it (NaN where unavailable).

        Returns a fresh array in the order of :attr:`names`.
        """
        self.structure_change = None
        args = self._kernel_args(frame)
        if args is None:  # a segment's first frame, or no atoms
            n = frame.n_atoms
            if n != self._n or self._numbers is None:
                if self._numbers is not None:
                    self.structure_change = (
                        f"atom count changed from {self._n} to {n} "
                        f"({_formula(self._numbers)} -> {_formula(frame.numbers)})"
                    )
                self._start(frame)
            if n == 0:
                out = np.full(_N_FEATURES, math.nan)
                broken = frame.energy is not None and not math.isfinite(frame.energy)
                out[kern.O_NONFINITE] = float(broken)
                self._last = frame
                return out
            args = self._kernel_args(frame)
            assert args is not None
        out = _empty(_N_FEATURES)
        while True:
            status = _update(*args, out, *self._state)  # type: ignore[call-arg]
            if not status:  # kern.OK
                break
            self._handle(status, frame)  # a request: answer it, call again
        self._last = frame
        return out

    def _kernel_args(self, frame: Frame) -> tuple[Any, ...] | None:
        """The frame's arguments of the feature kernel (those before ``out``), or None
        when :meth:`update` has more to do first (a segment's first frame, no atoms)."""
        # The per-frame path costs a few microseconds of Python around the kernel at 100
        # atoms, so it looks each thing up once and skips what the usual frame needs not.
        positions = frame.positions
        n = positions.shape[0]
        if n != self._n or n == 0 or self._numbers is None:
            return None
        v = frame.velocities
        f = frame.forces
        cell = frame.cell
        pbc = frame.pbc
        energy = frame.energy
        t = frame.time
        # Numba compiles read-only arrays as another type, so one would compile the kernel
        # again in the hot path: adapters share one read-only numbers array among their
        # frames, and cell and pbc are often shared constants. (Frame's own arrays are
        # writable: Frame copies read-only ones.)
        numbers = frame.numbers
        if numbers is self._shared_numbers:
            numbers = self._numbers_copy
        elif not numbers.flags.writeable:
            self._shared_numbers, self._numbers_copy = numbers, numbers.copy()
            numbers = self._numbers_copy
        if pbc is self._shared_pbc:
            pbc = self._pbc_copy
        elif not pbc.flags.writeable:
            self._shared_pbc, self._pbc_copy = pbc, pbc.copy()
            pbc = self._pbc_copy
        if cell is None:
            cell = _EYE
            has_cell = False
        else:
            has_cell = True
            if cell is self._shared_cell:
                cell = self._cell_copy
            elif not cell.flags.writeable:
                self._shared_cell, self._cell_copy = cell, cell.copy()
                cell = self._cell_copy
        return (
            positions, numbers, _EMPTY3 if v is None else v, _EMPTY3 if f is None else f,
            cell, pbc, math.nan if energy is None else energy, math.nan if t is None else t,
            float(frame.step), v is not None, f is not None, has_cell, energy is not None,
            t is not None,
        )  # fmt: skip

    def _handle(self, status: int, frame: Frame) -> None:
        """Answer a request from the kernel before it is called again."""
        need = int(self._ibuf[kern.I_NEED])
        if status == kern.SPECIES_CHANGED:
            assert self._numbers is not None
            self.structure_change = _species_change(self._numbers, frame.numbers)
            self._start(frame)
        elif status == kern.GROW_CONTACT:
            self._cpairs = np.zeros((2 * need, 2), dtype=np.int64)
            self._cshift = np.zeros((2 * need, 3))
        elif status == kern.GROW_RDF:
            self._rpairs = np.zeros((2 * need, 2), dtype=np.int64)
            self._rshift = np.zeros((2 * need, 3))
        else:  # pragma: no cover - the kernel has no other codes
            raise RuntimeError(f"feature kernel returned unknown status {status}")
        self._pack()

    # ------------------------------------------------------------- reporting

    def attribution(self) -> Attribution:
        """Atoms behind the latest frame's features (largest movers, closest pair)."""
        return self.attribution_later()()

    def attribution_later(self) -> Callable[[], Attribution]:
        """:meth:`attribution` of the latest frame, worked out when called, even after the
        engine has moved on (it keeps a copy of the frame's per-atom displacements). The
        pipeline runs the engine ahead like this when it scores LSTM windows in batches."""
        closest = (int(self._ibuf[kern.I_CLOSEST_I]), int(self._ibuf[kern.I_CLOSEST_J]))
        last = self._last
        top = self.top_atoms
        if last is None or last.n_atoms == 0:
            return lambda: Attribution(np.empty(0, dtype=np.intp), (-1, -1))
        if self._ibuf[kern.I_LAST_BAD]:
            positions = last.positions
            return lambda: Attribution(
                np.flatnonzero(~np.isfinite(positions).all(axis=1))[:top].astype(np.intp),
                (-1, -1),
            )
        if self._ibuf[kern.I_PUSHED] < 2:  # the segment's first frame has no displacement
            return lambda: Attribution(np.empty(0, dtype=np.intp), closest)
        disp = self._disp.copy()

        def later() -> Attribution:
            order = np.argsort(-disp, kind="stable")[: min(top, disp.size)]
            return Attribution(order.astype(np.intp), closest)

        return later

    @property
    def neighbor_list_builds(self) -> tuple[int, int]:
        """How often the contact list and the RDF list were built in this segment."""
        return int(self._ibuf[kern.I_CONTACT_BUILDS]), int(self._ibuf[kern.I_RDF_BUILDS])


def _formula(numbers: NDArray[np.int32]) -> str:
    counts = Counter(int(z) for z in numbers)
    return "".join(f"{_symbol(z)}{c}" for z, c in sorted(counts.items())) or "nothing"


def _symbol(z: int) -> str:
    return SYMBOLS[z] if 0 <= z < len(SYMBOLS) else f"Z{z}"


def _species_change(before: NDArray[np.int32], after: NDArray[np.int32]) -> str:
    changed = np.flatnonzero(before != after)
    i = int(changed[0])
    return (
        f"species changed for {changed.size} atom(s), first atom {i}: "
        f"{_symbol(int(before[i]))} -> {_symbol(int(after[i]))}"
    )


def warmup() -> float:
    """Compile every kernel on tiny inputs before the first real frame; returns seconds.

    Runs the code paths a stream can take (periodic and open cells, missing data, a
    non-finite frame, list growth, a species change) so the first real frame does not
    compile. With ``cache=True`` later processes load the compiled code from disk.
    """
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    cell = np.eye(3) * 6.0
    engine = FeatureEngine(window=4, rdf_stride=2, rdf_cutoff=2.5, rdf_bins=4)
    base = rng.uniform(0, 6, size=(4, 3))
    numbers = [29, 29, 29, 29]
    for k in range(6):
        positions = base + 0.05 * k
        moving = np.full((4, 3), 0.1 * k)
        engine.update(
            Frame(
                positions,
                numbers,
                velocities=moving,
                forces=moving,
                energy=-1.0,
                cell=cell,
                step=k,
                time=2.0 * k,
            )
        )
        engine.update(Frame(positions, numbers, step=k))
    engine.update(Frame(np.full((4, 3), np.nan), numbers, energy=math.nan))
    engine.update(Frame(base, [29, 29, 29, 47], cell=cell))
    return time.perf_counter() - start
