"""Private Numba kernels: arrays in, arrays out, no Python objects.

Public wrappers in :mod:`trajwatch.features.engine` validate inputs; these trust them.
Each kernel has a plain NumPy reference in :mod:`trajwatch.features.reference` (or is
checked against NumPy directly in ``tests/test_kernels.py``), with and without
``NUMBA_DISABLE_JIT=1``. Neighbour search lives in :mod:`._kernels_neighbors`, the
per-frame driver in :mod:`._kernels_update`.

Cells are row vectors (``r = s @ cell`` for fractional ``s``), as in ASE and extxyz.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# Sliding histogram of displacement magnitudes: log-linear bins, 2**-30 Å .. 2**10 Å.
# Value x = m * 2**e (math.frexp, 0.5 <= m < 1) falls in octave e, sub-bin (2m - 1) * SUB.
HIST_SUB = 256
HIST_EMIN = -29
HIST_EMAX = 11
HIST_OCTAVES = HIST_EMAX - HIST_EMIN
HIST_BINS = HIST_OCTAVES * HIST_SUB + 2
"""Fine bins: 0 is underflow (x < 2**-30 Å, including 0), the last is overflow (>= 1024 Å)."""
HIST_GROUPS = HIST_OCTAVES + 2
"""Coarse counts (underflow, one per octave, overflow) stored after the fine bins."""
HIST_SIZE = HIST_BINS + HIST_GROUPS
HIST_UNDERFLOW = 2.0**-30
HIST_REL_ERROR = 0.5 / HIST_SUB
"""Bound on the relative error of a quantile read from the histogram (plus 2**-30 Å)."""


@njit(cache=True, nogil=True)
def _inv3(m: np.ndarray, out: np.ndarray) -> float:
    """Write the inverse of the 3x3 matrix ``m`` into ``out``; returns the determinant."""
    c00 = m[1, 1] * m[2, 2] - m[1, 2] * m[2, 1]
    c01 = m[1, 2] * m[2, 0] - m[1, 0] * m[2, 2]
    c02 = m[1, 0] * m[2, 1] - m[1, 1] * m[2, 0]
    det = m[0, 0] * c00 + m[0, 1] * c01 + m[0, 2] * c02
    if det == 0.0:
        return 0.0
    inv = 1.0 / det
    out[0, 0] = c00 * inv
    out[1, 0] = c01 * inv
    out[2, 0] = c02 * inv
    out[0, 1] = (m[0, 2] * m[2, 1] - m[0, 1] * m[2, 2]) * inv
    out[1, 1] = (m[0, 0] * m[2, 2] - m[0, 2] * m[2, 0]) * inv
    out[2, 1] = (m[0, 1] * m[2, 0] - m[0, 0] * m[2, 1]) * inv
    out[0, 2] = (m[0, 1] * m[1, 2] - m[0, 2] * m[1, 1]) * inv
    out[1, 2] = (m[0, 2] * m[1, 0] - m[0, 0] * m[1, 2]) * inv
    out[2, 2] = (m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]) * inv
    return float(det)


@njit(cache=True, nogil=True)
def _minimum_image(d: np.ndarray, cell: np.ndarray, inv_cell: np.ndarray, pbc: np.ndarray) -> None:
    """Wrap the vectors ``d`` (M, 3) in place by fractional rounding along periodic axes."""
    for i in range(d.shape[0]):
        s0 = d[i, 0] * inv_cell[0, 0] + d[i, 1] * inv_cell[1, 0] + d[i, 2] * inv_cell[2, 0]
        s1 = d[i, 0] * inv_cell[0, 1] + d[i, 1] * inv_cell[1, 1] + d[i, 2] * inv_cell[2, 1]
        s2 = d[i, 0] * inv_cell[0, 2] + d[i, 1] * inv_cell[1, 2] + d[i, 2] * inv_cell[2, 2]
        w0 = np.rint(s0) if pbc[0] else 0.0
        w1 = np.rint(s1) if pbc[1] else 0.0
        w2 = np.rint(s2) if pbc[2] else 0.0
        if w0 == 0.0 and w1 == 0.0 and w2 == 0.0:
            continue  # the usual case: no boundary crossed, d stays exactly as it is
        for k in range(3):
            d[i, k] -= w0 * cell[0, k] + w1 * cell[1, k] + w2 * cell[2, k]


@njit(cache=True, nogil=True)
def _step_displacements(
    positions: np.ndarray,
    previous: np.ndarray,
    unwrapped: np.ndarray,
    cell: np.ndarray,
    inv_cell: np.ndarray,
    pbc: np.ndarray,
    d: np.ndarray,
    displacement: np.ndarray,
) -> None:
    """Per-atom step ``d`` (N, 3) since ``previous`` (minimum image) and its length.

    Writes d_i into ``d``, |d_i| into ``displacement`` (N,) and adds d_i to
    ``unwrapped`` (N, 3), so an atom that crosses the boundary keeps a continuous path.
    """
    n = positions.shape[0]
    for i in range(n):
        for k in range(3):
            d[i, k] = positions[i, k] - previous[i, k]
    if pbc[0] or pbc[1] or pbc[2]:
        _minimum_image(d, cell, inv_cell, pbc)
    for i in range(n):
        s = 0.0
        for k in range(3):
            unwrapped[i, k] += d[i, k]
            s += d[i, k] * d[i, k]
        displacement[i] = np.sqrt(s)


@njit(cache=True, nogil=True)
def _kinetic_energy(velocities: np.ndarray, masses: np.ndarray) -> float:
    """Sum of m v² / 2 in amu·Å²/fs² (multiply by AMU_A2_PER_FS2_IN_EV for eV)."""
    total = 0.0
    for i in range(velocities.shape[0]):
        v2 = velocities[i, 0] ** 2 + velocities[i, 1] ** 2 + velocities[i, 2] ** 2
        total += masses[i] * v2
    return 0.5 * total


# --------------------------------------------------------------------------- moments


@njit(cache=True, nogil=True)
def _central_moments(x: np.ndarray, out: np.ndarray) -> None:
    """``out[:5] = [n, mean, M2, M3, M4]`` with M_p = sum (x - mean)**p (two passes)."""
    n = x.shape[0]
    mean = 0.0
    for i in range(n):
        mean += x[i]
    mean = mean / n if n else 0.0
    m2 = m3 = m4 = 0.0
    for i in range(n):
        d = x[i] - mean
        d2 = d * d
        m2 += d2
        m3 += d2 * d
        m4 += d2 * d2
    out[0] = n
    out[1] = mean
    out[2] = m2
    out[3] = m3
    out[4] = m4


@njit(cache=True, nogil=True)
def _hist_bin(x: float) -> int:
    """Fine bin of a non-negative value (NaN goes to the overflow bin)."""
    if x < HIST_UNDERFLOW:
        return 0
    if not x < 2.0 ** (HIST_EMAX - 1):
        return HIST_BINS - 1
    m, e = math.frexp(x)
    return 1 + (e - HIST_EMIN) * HIST_SUB + int((2.0 * m - 1.0) * HIST_SUB)


# For a positive double, bits >> 44 is (biased exponent) * 256 + top 8 mantissa bits:
# the same bin as _hist_bin without frexp. The offset maps the octave of 2**-30 to bin 1.
_BITS_SHIFT = 52 - 8
_BITS_OFFSET = (1022 + HIST_EMIN) * HIST_SUB - 1


@njit(cache=True, nogil=True)
def _hist_bins(x: np.ndarray, bits: np.ndarray, out: np.ndarray) -> None:
    """``out[i] = _hist_bin(x[i])`` for non-negative x; ``bits`` is ``x`` viewed as int64."""
    assert HIST_SUB == 256  # the shift above assumes 8 sub-bin bits
    top = 2.0 ** (HIST_EMAX - 1)
    for i in range(x.shape[0]):
        v = x[i]
        if v < HIST_UNDERFLOW:
            out[i] = 0
        elif v < top:
            out[i] = (bits[i] >> _BITS_SHIFT) - _BITS_OFFSET
        else:
            out[i] = HIST_BINS - 1


@njit(cache=True, nogil=True)
def _hist_group(b: int) -> int:
    if b == 0:
        return 0
    if b == HIST_BINS - 1:
        return HIST_GROUPS - 1
    return 1 + (b - 1) // HIST_SUB


@njit(cache=True, nogil=True)
def _hist_value(b: int) -> float:
    """Representative value of a fine bin: its midpoint (0 for underflow, inf for overflow)."""
    if b == 0:
        return 0.0
    if b == HIST_BINS - 1:
        return np.inf
    octave = (b - 1) // HIST_SUB
    sub = (b - 1) % HIST_SUB
    return math.ldexp(1.0 + (sub + 0.5) / HIST_SUB, octave + HIST_EMIN - 1)


@njit(cache=True, nogil=True)
def _hist_add(hist: np.ndarray, b: int, count: int) -> None:
    hist[b] += count
    hist[HIST_BINS + _hist_group(b)] += count


@njit(cache=True, nogil=True)
def _hist_rank(hist: np.ndarray, rank: int) -> int:
    """Fine bin holding the value of 0-based ``rank`` in sorted order."""
    cum = 0
    for g in range(HIST_GROUPS):
        c = hist[HIST_BINS + g]
        if cum + c > rank:
            if g == 0:
                return 0
            if g == HIST_GROUPS - 1:
                return HIST_BINS - 1
            first = 1 + (g - 1) * HIST_SUB
            for b in range(first, first + HIST_SUB):
                cum += hist[b]
                if cum > rank:
                    return b
        cum += c
    return HIST_BINS - 1


@njit(cache=True, nogil=True)
def _hist_quantile(hist: np.ndarray, total: int, q: float) -> float:
    """Quantile ``q`` (NumPy's default 'linear' rule) estimated from bin midpoints.

    Within HIST_REL_ERROR relative (plus 2**-30 Å) of the exact value: both order
    statistics it interpolates between are read within that bound.
    """
    if total <= 0:
        return np.nan
    h = q * (total - 1)
    k = math.floor(h)
    f = h - k
    lo = _hist_value(_hist_rank(hist, k))
    if f == 0.0 or k + 1 >= total:
        return lo
    hi = _hist_value(_hist_rank(hist, k + 1))
    return lo + f * (hi - lo)


# -------------------------------------------------------------------------- spectra


@njit(cache=True, nogil=True)
def _dft_direct(
    values: np.ndarray, present: np.ndarray, twiddle: np.ndarray, X: np.ndarray, Z: np.ndarray
) -> None:
    """X_k = sum_j x_j w^(kj), Z_k = sum_j [present_j] w^(kj), w = exp(-2 pi i / W)."""
    w = values.shape[0]
    for k in range(X.shape[0]):
        x = 0j
        z = 0j
        for j in range(w):
            if present[j]:
                t = twiddle[(k * j) % w]
                x += values[j] * t
                z += t
        X[k] = x
        Z[k] = z


@njit(cache=True, nogil=True)
def _dft_slide(
    X: np.ndarray,
    Z: np.ndarray,
    twiddle: np.ndarray,
    old: float,
    old_present: bool,
    new: float,
    new_present: bool,
) -> None:
    """Slide the window one sample: X_k <- (X_k - x_old + x_new) w^(-k)."""
    w = twiddle.shape[0]
    z_in = (1.0 if new_present else 0.0) - (1.0 if old_present else 0.0)
    x_in = (new if new_present else 0.0) - (old if old_present else 0.0)
    for k in range(X.shape[0]):
        up = twiddle[(w - k) % w]
        X[k] = (X[k] + x_in) * up
        Z[k] = (Z[k] + z_in) * up


@njit(cache=True, nogil=True)
def _spectral(
    X: np.ndarray, Z: np.ndarray, mean: float, window: int, dt: float, out: np.ndarray
) -> None:
    """``out[:3]`` = dominant frequency (THz), spectral entropy, peak ratio.

    Power of the mean-removed, zero-padded signal at k = 1 .. W/2: |X_k - mean Z_k|².
    """
    out[0] = out[1] = out[2] = np.nan
    bins = window // 2
    total = 0.0
    best = -1.0
    k_best = 0
    for k in range(1, bins + 1):
        c = X[k] - mean * Z[k]
        p = c.real * c.real + c.imag * c.imag
        total += p
        if p > best:
            best = p
            k_best = k
    if not (total > 0.0 and dt > 0.0):
        return
    entropy = 0.0
    for k in range(1, bins + 1):
        c = X[k] - mean * Z[k]
        p = (c.real * c.real + c.imag * c.imag) / total
        if p > 0.0:
            entropy -= p * math.log(p)
    out[0] = k_best / (window * dt) * 1000.0
    out[1] = entropy / math.log(bins)
    out[2] = best / total


# ---------------------------------------------------------------------- small fits


@njit(cache=True, nogil=True)
def _slope(x: np.ndarray, y: np.ndarray, n: int) -> float:
    """Least-squares slope of y[:n] against x[:n] (two passes, centred); NaN if undefined."""
    if n < 2:
        return np.nan
    mx = 0.0
    my = 0.0
    for i in range(n):
        mx += x[i]
        my += y[i]
    mx /= n
    my /= n
    sxx = 0.0
    sxy = 0.0
    for i in range(n):
        dx = x[i] - mx
        sxx += dx * dx
        sxy += dx * (y[i] - my)
    return sxy / sxx if sxx > 0.0 else np.nan


@njit(cache=True, nogil=True)
def _anisotropy(t: np.ndarray) -> float:
    """Relative shape anisotropy 1 - 3 I2 / I1² of [xx, yy, zz, xy, xz, yz]; NaN if I1 = 0."""
    i1 = t[0] + t[1] + t[2]
    if not i1 > 0.0:
        return np.nan
    i2 = t[0] * t[1] + t[1] * t[2] + t[0] * t[2] - t[3] * t[3] - t[4] * t[4] - t[5] * t[5]
    return float(1.0 - 3.0 * i2 / (i1 * i1))


@njit(cache=True, nogil=True)
def _first_peak(g: np.ndarray, dr: float, out: np.ndarray) -> None:
    """``out[:2]`` = position and height of the highest bin of g, parabola-refined."""
    k = 0
    for b in range(1, g.shape[0]):
        if g[b] > g[k]:
            k = b
    if not g[k] > 0.0:
        out[0] = out[1] = np.nan
        return
    position = (k + 0.5) * dr
    height = g[k]
    if 0 < k < g.shape[0] - 1:
        curvature = g[k - 1] - 2.0 * g[k] + g[k + 1]
        if curvature < 0.0:
            delta = 0.5 * (g[k - 1] - g[k + 1]) / curvature
            position += delta * dr
            height -= 0.25 * (g[k - 1] - g[k + 1]) * delta
    out[0] = position
    out[1] = height


@njit(cache=True, nogil=True)
def _zero_crossing(lags: np.ndarray, values: np.ndarray, n: int) -> float:
    """First lag where the curve (1 at lag 0, then ``values[:n]`` at ``lags[:n]``) is <= 0.

    Linear interpolation between the two points around the sign change; NaN if none.
    """
    lag0 = 0.0
    c0 = 1.0
    for i in range(n):
        if values[i] <= 0.0:
            return float(lag0 + c0 * (lags[i] - lag0) / (c0 - values[i]))
        lag0 = lags[i]
        c0 = values[i]
    return np.nan
