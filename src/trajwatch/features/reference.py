"""Plain NumPy reference implementations of the feature formulas (clarity over speed).

The tests hold the Numba kernels and the incremental engine to these functions; the
formulas are the ones written in ``docs/features.md``. :func:`features` recomputes every
feature of the newest frame from scratch, from the frames of the current segment.

>>> import numpy as np
>>> cell = np.eye(3) * 10.0
>>> round(float(minimum_image(np.array([[9.0, 0.0, 0.0]]), cell, np.ones(3, bool))[0, 0]), 9)
-1.0
>>> skewed = np.array([[10.0, 0, 0], [9.0, 1.0, 0], [0, 0, 10.0]])  # b leans onto a
>>> pair = np.array([[0.0, 0, 0], [4.6, 0.3, 0]])
>>> pbc = np.ones(3, bool)
>>> rounded = minimum_image(pair[1:] - pair[:1], skewed, pbc)  # rounding: not the nearest
>>> round(float(np.linalg.norm(rounded)), 3), round(closest_pair(pair, skewed, pbc)[0], 3)
(4.61, 3.471)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise, product

import numpy as np
from numpy.typing import NDArray

from trajwatch.elements import MASSES
from trajwatch.features.catalogue import FEATURE_NAMES, lag_set
from trajwatch.frame import Frame
from trajwatch.units import AMU_A2_PER_FS2_IN_EV, KB_EV_PER_K

FLAT = 1e-12
"""Spread (std / mean) below which values count as constant: no skew, kurtosis, spectrum."""

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

__all__ = [
    "closest_pair",
    "displacements",
    "features",
    "kinetic_energy",
    "minimum_image",
    "rdf_counts",
    "tagged_atoms",
]


def minimum_image(d: FloatArray, cell: FloatArray | None, pbc: BoolArray) -> FloatArray:
    """Vectors ``d`` (M, 3) wrapped by fractional rounding (the unwrapping convention).

    This is the true minimum image only for steps shorter than half the smallest
    perpendicular width of the cell; :func:`closest_pair` searches images exactly.
    """
    if cell is None or not pbc.any():
        unchanged: FloatArray = d.copy()
        return unchanged
    s = d @ np.linalg.inv(cell)
    s[:, pbc] -= np.rint(s[:, pbc])
    wrapped: FloatArray = s @ cell
    return wrapped


def displacements(
    positions: FloatArray, previous: FloatArray, cell: FloatArray | None, pbc: BoolArray
) -> FloatArray:
    """|r_i(t) - r_i(t-1)| per atom, minimum image."""
    lengths: FloatArray = np.linalg.norm(minimum_image(positions - previous, cell, pbc), axis=1)
    return lengths


def _widths(cell: FloatArray) -> FloatArray:
    """Perpendicular widths of the cell (distance between opposite faces)."""
    widths: FloatArray = 1.0 / np.linalg.norm(np.linalg.inv(cell), axis=0)
    return widths


def _images(cell: FloatArray | None, pbc: BoolArray, reach: float) -> FloatArray:
    """Every lattice vector L·cell that can matter for vectors reduced by rounding.

    After rounding, |s_a| <= 1/2, so an image within ``reach`` has |L_a| <= reach/w_a + 1/2.
    """
    if cell is None or not pbc.any():
        return np.zeros((1, 3))
    widths = _widths(cell)
    ranges = [
        range(-math.ceil(reach / widths[a] + 0.5), math.ceil(reach / widths[a] + 0.5) + 1)
        if pbc[a]
        else range(1)
        for a in range(3)
    ]
    return np.array(list(product(*ranges)), dtype=np.float64) @ cell


def closest_pair(
    positions: FloatArray, cell: FloatArray | None, pbc: BoolArray
) -> tuple[float, int, int]:
    """Smallest distance over pairs i < j and all their periodic images, and the pair.

    Exact for any cell shape (images are searched, not just rounded); an atom's own
    images do not count. ``(nan, -1, -1)`` for fewer than two atoms.
    """
    n = len(positions)
    if n < 2:
        return math.nan, -1, -1
    i, j = np.triu_indices(n, k=1)
    d = minimum_image(positions[j] - positions[i], cell, pbc)
    upper = float(np.linalg.norm(d, axis=1).min())
    shifts = _images(cell, pbc, upper)
    r = np.linalg.norm(d[:, None, :] + shifts[None, :, :], axis=2).min(axis=1)
    k = int(np.argmin(r))
    return float(r[k]), int(i[k]), int(j[k])


def rdf_counts(
    positions: FloatArray,
    cell: FloatArray,
    pbc: BoolArray,
    centers: NDArray[np.int64],
    cutoff: float,
    bins: int,
) -> NDArray[np.int64]:
    """Pairs (i in ``centers``, j != i, all images) per distance bin of width cutoff/bins."""
    shifts = _images(cell, pbc, cutoff)
    counts = np.zeros(bins, dtype=np.int64)
    dr = cutoff / bins
    for i in centers:
        d = minimum_image(positions - positions[i], cell, pbc)
        r = np.linalg.norm(d[:, None, :] + shifts[None, :, :], axis=2)
        r[i] = np.inf  # an atom and its own images are not a pair
        r = r[r < cutoff]
        counts += np.bincount(np.minimum((r / dr).astype(np.int64), bins - 1), minlength=bins)
    return counts


def kinetic_energy(velocities: FloatArray, masses: FloatArray) -> float:
    """Sum of m v² / 2 in amu·Å²/fs²."""
    return float(0.5 * np.sum(masses[:, None] * velocities**2))


def tagged_atoms(n_atoms: int, sample_atoms: int) -> NDArray[np.int64]:
    """Atoms used for MSD, VACF and as RDF centres: every s-th, s = ceil(N / sample_atoms)."""
    stride = max(1, math.ceil(n_atoms / sample_atoms))
    return np.arange(0, n_atoms, stride, dtype=np.int64)


def _geometry(frame: Frame) -> tuple[FloatArray | None, BoolArray]:
    """The frame's cell when it has periodic directions, else None (no minimum image)."""
    return (frame.cell if frame.has_cell else None), frame.pbc


def _clock(frame: Frame) -> float:
    return frame.time if frame.time is not None else float(frame.step)


def _finite(x: FloatArray | None) -> bool:
    return x is not None and bool(np.isfinite(x).all())


def _velocities(history: Sequence[Frame], t: int) -> FloatArray | None:
    """The frame's own velocities, else finite differences of the unwrapped step."""
    frame = history[t]
    if frame.velocities is not None:
        return frame.velocities if _finite(frame.velocities) else None
    if t == 0:
        return None
    before = history[t - 1]
    if frame.time is None or before.time is None or not frame.time > before.time:
        return None
    step = minimum_image(frame.positions - before.positions, *_geometry(frame))
    return step / (frame.time - before.time)


def _energy(frame: Frame) -> float:
    e = frame.energy
    return e / frame.n_atoms if e is not None and math.isfinite(e) else math.nan


def _kinetic_ev(velocities: FloatArray | None, masses: FloatArray) -> float:
    if velocities is None:
        return math.nan
    return kinetic_energy(velocities, masses) * AMU_A2_PER_FS2_IN_EV


def _slope(x: FloatArray, y: FloatArray) -> float:
    """Least-squares slope of y against x; NaN for fewer than 2 distinct x."""
    if len(x) < 2:
        return math.nan
    dx = x - x.mean()
    sxx = float(np.sum(dx * dx))
    return float(np.sum(dx * (y - y.mean())) / sxx) if sxx > 0 else math.nan


def features(
    history: Sequence[Frame],
    *,
    window: int = 50,
    sample_atoms: int = 250,
    rdf_stride: int = 20,
    rdf_cutoff: float = 5.0,
    rdf_bins: int = 100,
) -> dict[str, float]:
    """Every feature of ``history[-1]``, recomputed from the frames of its segment.

    ``history`` holds the frames since the engine's last reset, oldest first, all with
    finite positions and the same atoms (the engine skips frames with non-finite
    positions, so leave those out). Only the last ``window + 1`` frames and the first
    frame with an energy and velocities (the energy drift's origin) are read.
    """
    n_frames = len(history)
    last = history[-1]
    n = last.n_atoms
    masses = MASSES[last.numbers]
    start = max(0, n_frames - window)
    win = range(start, n_frames)  # segment indices of the window's frames
    x: dict[str, float] = dict.fromkeys(FEATURE_NAMES, math.nan)

    # --- per-atom steps of every window frame that has a predecessor
    steps = {
        t: minimum_image(history[t].positions - history[t - 1].positions, *_geometry(history[t]))
        for t in win
        if t > 0
    }
    disp = {t: np.linalg.norm(s, axis=1) for t, s in steps.items()}
    velocities = {t: v for t in win if (v := _velocities(history, t)) is not None}

    # --- per-frame features of the newest frame
    t_last = n_frames - 1
    x["nonfinite_count"] = float(
        sum(int((~np.isfinite(a)).sum()) for a in (last.velocities, last.forces) if a is not None)
        + (last.energy is not None and not math.isfinite(last.energy))
    )
    if t_last in disp and n:
        x["step_disp_max"] = float(disp[t_last].max())
    x["step_min_dist"] = closest_pair(last.positions, *_geometry(last))[0]
    kinetic = _kinetic_ev(velocities.get(t_last), masses)
    if n:
        x["kinetic_temperature"] = 2.0 * kinetic / (3.0 * n * KB_EV_PER_K)
        x["energy_per_atom"] = _energy(last)
    if last.forces is not None and _finite(last.forces) and n:
        x["max_force"] = float(np.linalg.norm(last.forces, axis=1).max())
    for t0 in range(n_frames):
        e0 = _energy(history[t0]) * n + _kinetic_ev(_velocities(history, t0), masses)
        if math.isfinite(e0):
            e_now = _energy(last) * n + kinetic
            x["energy_drift"] = (e_now - e0) / n
            break

    # --- displacement statistics over every (frame, atom) of the window
    clocks = np.array([_clock(history[t]) for t in win])
    dt = (clocks[-1] - clocks[0]) / (len(clocks) - 1) if len(clocks) > 1 else math.nan
    if disp and n:
        d = np.concatenate(list(disp.values()))
        mean = d.mean()
        m2, m3, m4 = (np.mean((d - mean) ** p) for p in (2, 3, 4))
        x["disp_mean"] = float(mean)
        x["disp_std"] = math.sqrt(m2)
        if m2 > (FLAT * mean) ** 2 and m2 > 0:
            x["disp_skew"] = float(m3 / m2**1.5)
            x["disp_kurtosis"] = float(m4 / m2**2 - 3.0)
        x["disp_max"] = float(d.max())
        x["disp_median"] = float(np.median(d))
        x["disp_p95"] = float(np.percentile(d, 95))
        if d.max() > 0:
            x["crest_factor"] = float(d.max() / np.sqrt(np.mean(d**2)))
            x["impulse_factor"] = float(d.max() / mean)
        vectors = np.concatenate(list(steps.values()))
        tensor = vectors.T @ vectors
        i1 = np.trace(tensor)
        i2 = 0.5 * (i1**2 - np.trace(tensor @ tensor))
        if i1 > 0:
            x["anisotropy"] = float(1.0 - 3.0 * i2 / i1**2)

    # --- the frame signal: each frame's mean displacement, zero-padded at the old end
    signal = np.array([disp[t].mean() for t in win if t in disp]) if n else np.empty(0)
    if len(signal) >= 2:  # spectral features need a signal that is not constant
        x["frame_variance"] = float(signal.var())
        padded = np.zeros(window)
        padded[window - len(signal) :] = signal - signal.mean()
        power = np.abs(np.fft.rfft(padded)[1 : window // 2 + 1]) ** 2
        total = power.sum()
        if signal.var() > (FLAT * signal.mean()) ** 2 and dt > 0:
            p = power / total
            k = int(np.argmax(power)) + 1
            x["dominant_freq"] = k / (window * dt) * 1000.0
            nz = p[p > 0]
            x["spectral_entropy"] = float(-np.sum(nz * np.log(nz)) / math.log(len(power)))
            x["spectral_peak_ratio"] = float(power.max() / total)

    # --- velocities
    if velocities and n:
        x["rms_velocity"] = math.sqrt(
            float(np.mean([np.mean(np.sum(v**2, axis=1)) for v in velocities.values()]))
        )

    # --- MSD and VACF of the tagged atoms, averaged over every origin in the window
    tagged = tagged_atoms(n, sample_atoms)
    unwrapped = {start: history[start].positions[tagged]}
    for t in win:
        if t > start:
            unwrapped[t] = unwrapped[t - 1] + steps[t][tagged]
    lags = [int(lag) for lag in lag_set(window) if lag <= len(win) - 1]
    msd = np.array(
        [
            np.mean(
                [
                    np.mean(np.sum((unwrapped[t] - unwrapped[t - lag]) ** 2, axis=1))
                    for t in win
                    if t - lag >= start
                ]
            )
            for lag in lags
        ]
    )
    if len(msd) >= 1 and n:
        x["msd_mean"] = float(msd.mean())
        x["msd_final"] = float(msd[-1])
    if len(msd) >= 2 and n:
        x["msd_std"] = float(msd.std())
        x["msd_slope"] = _slope(np.array(lags, dtype=np.float64) * dt, msd)
    tv = {t: v[tagged] for t, v in velocities.items()}
    if tv and n:
        c0 = float(np.mean([np.mean(np.sum(v * v, axis=1)) for v in tv.values()]))
        curve = [(0.0, 1.0)]
        for lag in lags:
            products = [
                np.mean(np.sum(tv[t] * tv[t - lag], axis=1))
                for t in win
                if t in tv and t - lag in tv
            ]
            if products and c0 > 0:
                curve.append((float(lag), float(np.mean(products)) / c0))
        if len(curve) > 1 and curve[1][0] == 1.0:
            x["vacf_initial_decay"] = 1.0 - curve[1][1]
        for (lag0, c_a), (lag1, c_b) in pairwise(curve):
            if c_b <= 0:
                x["vacf_zero_crossing"] = (lag0 + c_a * (lag1 - lag0) / (c_a - c_b)) * dt
                break

    # --- energy
    energies = np.array([_energy(history[t]) for t in win])
    ok = np.isfinite(energies)
    if ok.any():
        x["energy_mean"] = float(energies[ok].mean())
        x["energy_std"] = float(energies[ok].std())
        x["energy_trend"] = _slope(clocks[ok], energies[ok])

    # --- structure
    if n >= 2:
        x["min_interatomic_dist"] = min(
            closest_pair(history[t].positions, *_geometry(history[t]))[0] for t in win
        )
    # g(r): frame t counts the pairs of every rdf_stride-th tagged atom from t % rdf_stride
    counts = np.zeros(rdf_bins)
    norm = 0.0  # sum over frames of (centres) * (pair density (N - 1) / V)
    for t in win:
        frame = history[t]
        centres = tagged[t % rdf_stride :: rdf_stride]
        if frame.cell is None or not frame.has_cell or n < 2 or len(centres) == 0:
            continue
        counts += rdf_counts(frame.positions, frame.cell, frame.pbc, centres, rdf_cutoff, rdf_bins)
        norm += len(centres) * (n - 1) / abs(np.linalg.det(frame.cell))
    if norm > 0:
        dr = rdf_cutoff / rdf_bins
        edges = np.arange(rdf_bins + 1) * dr
        shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
        x["rdf_first_peak_pos"], x["rdf_first_peak_height"] = _first_peak(
            counts / (norm * shell), dr
        )
    return x


def _first_peak(g: FloatArray, dr: float) -> tuple[float, float]:
    """Highest bin of g(r), refined by the parabola through it and its neighbours."""
    k = int(np.argmax(g))
    if not g[k] > 0:
        return math.nan, math.nan
    position, height = (k + 0.5) * dr, float(g[k])
    if 0 < k < len(g) - 1:
        curvature = g[k - 1] - 2.0 * g[k] + g[k + 1]
        if curvature < 0:
            delta = 0.5 * (g[k - 1] - g[k + 1]) / curvature
            position += delta * dr
            height -= 0.25 * (g[k - 1] - g[k + 1]) * delta
    return float(position), float(height)
