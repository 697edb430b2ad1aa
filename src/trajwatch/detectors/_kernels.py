"""Private Numba kernels of the detectors: arrays in, arrays out, no Python objects.

The public classes in :mod:`trajwatch.detectors` own the arrays and validate input; these
trust them. Each kernel has a plain NumPy reference in ``tests/test_kernels_detectors.py``
and is tested against it with and without ``NUMBA_DISABLE_JIT=1``. All state lives in
fixed-size arrays allocated once, so no call ever allocates a tree, a window or a list.

Conventions: ``d`` features; a Welford block ``stats`` is ``(4, d)`` with rows count,
mean, M2 (sum of squared deviations) and the current streak of finite values.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from trajwatch._borrow import borrow
from trajwatch._kernel_cache import drop_stale_cache

_LN10 = math.log(10.0)

# --------------------------------------------------------------------------- Welford


@njit(cache=True, nogil=True)
def _welford_learn(x: np.ndarray, stats: np.ndarray) -> None:
    """Add ``x`` to the running count/mean/M2; non-finite entries reset their streak."""
    for k in range(x.size):
        v = x[k]
        if math.isfinite(v):
            c = stats[0, k] + 1.0
            delta = v - stats[1, k]
            stats[1, k] += delta / c
            stats[2, k] += delta * (v - stats[1, k])
            stats[0, k] = c
            stats[3, k] += 1.0
        else:
            stats[3, k] = 0.0


@njit(cache=True, nogil=True)
def _spread_floor(center: float, rel_floor: float, abs_floor: float) -> float:
    return rel_floor * abs(center) + abs_floor


@njit(cache=True, nogil=True)
def _deviation(
    v: float, center: float, spread: float, count: float, streak: float, min_streak: float
) -> float:
    """Signed z of one value; NaN when unknown, +-inf for a value gone non-finite."""
    if count < 2.0:
        return math.nan
    if math.isfinite(v):
        return (v - center) / spread
    if math.isnan(v):
        # NaN is "unavailable" unless the feature has been finite for a long while.
        return math.inf if streak >= min_streak else math.nan
    return v  # +-inf


@njit(cache=True, nogil=True)
def _welford_z(
    x: np.ndarray,
    stats: np.ndarray,
    rel_floor: float,
    abs_floor: float,
    min_streak: float,
    quantum: np.ndarray,
    z: np.ndarray,
) -> float:
    """Write signed z per feature into ``z``; return max |z| over known features.

    The std is floored by the feature's resolution ``quantum[k, 1]`` (its smallest
    non-zero change, :func:`_quantum_learn`; 0 = none), so a discrete feature that sat
    still for a while does not turn its next step into an alarm.
    """
    best = 0.0
    for k in range(x.size):
        c = stats[0, k]
        mean = stats[1, k]
        var = stats[2, k] / (c - 1.0) if c > 1.0 else 0.0
        spread = max(math.sqrt(max(var, 0.0)), _spread_floor(mean, rel_floor, abs_floor))
        spread = max(spread, quantum[k, 1])
        zk = _deviation(x[k], mean, spread, c, stats[3, k], min_streak)
        z[k] = zk
        if not math.isnan(zk) and abs(zk) > best:
            best = abs(zk)
    return best


@njit(cache=True, nogil=True)
def _standardise(
    x: np.ndarray, stats: np.ndarray, rel_floor: float, abs_floor: float, z: np.ndarray
) -> None:
    """z = (x - mean) / std with unknown or non-finite entries set to 0 (neutral)."""
    for k in range(x.size):
        c = stats[0, k]
        v = x[k]
        if c < 2.0 or not math.isfinite(v):
            z[k] = 0.0
            continue
        mean = stats[1, k]
        var = stats[2, k] / (c - 1.0)
        spread = max(math.sqrt(max(var, 0.0)), _spread_floor(mean, rel_floor, abs_floor))
        z[k] = (v - mean) / spread


@njit(cache=True, nogil=True)
def _quantum_learn(x: np.ndarray, quantum: np.ndarray) -> None:
    """Track each feature's smallest non-zero change between learned values.

    ``quantum`` is ``(d, 3)``: last value, smallest non-zero |change| (0 until one is
    seen), and whether a last value exists. Changes below 1e-9 relative are round-off.
    """
    for k in range(x.size):
        v = x[k]
        if not math.isfinite(v):
            continue
        if quantum[k, 2] > 0.0:
            step = abs(v - quantum[k, 0])
            # A change at round-off level (the same bin computed two ways) is no step.
            if step > 1e-9 * abs(v) and (quantum[k, 1] == 0.0 or step < quantum[k, 1]):
                quantum[k, 1] = step
        quantum[k, 0] = v
        quantum[k, 2] = 1.0


# ------------------------------------------------------------- per-feature tail scale


# The tail scale needs one high order statistic of each feature's last W |z| (for
# q = 0.99 and W = 256, the third largest), not the whole sorted window: each feature
# keeps the T largest values of its window, sorted descending, T = the most any window
# size up to W needs (see TailScale). A new value enters that list in O(T); a value
# leaving the window that was in it makes the list be counted again from the window,
# O(W T), which happens for about T/W of the frames.


@njit(cache=True, nogil=True)
def _tail_learn(z: np.ndarray, ring: np.ndarray, top: np.ndarray, meta: np.ndarray) -> None:
    """Slide |z_k| into feature k's window of recent |z| (``ring`` ``(d, W)``, arrival
    order; ``top`` ``(d, T)``, the window's T largest values, largest first; ``meta``
    ``(d, 2)`` fill and head). Non-finite z are skipped."""
    d, w = ring.shape
    t = top.shape[1]
    for k in range(d):
        v = z[k]
        if not math.isfinite(v):
            continue
        a = abs(v)
        n = int(meta[k, 0])
        head = int(meta[k, 1])
        row = top[k]
        old = ring[k, head]
        ring[k, head] = a
        meta[k, 1] = (head + 1) % w
        if n < w:
            meta[k, 0] = n + 1
            _top_insert(row, min(n, t), a)
        elif old >= row[t - 1]:
            _top_count(ring[k], row)  # the value leaving was one of the largest
        else:
            _top_insert(row, t, a)


@njit(cache=True, nogil=True)
def _top_insert(row: np.ndarray, filled: int, value: float) -> None:
    """Put ``value`` into the descending list ``row[:filled]`` (of capacity len(row)),
    dropping the smallest if the list is full and ``value`` is larger than it."""
    cap = row.shape[0]
    if filled == cap:
        if not value > row[cap - 1]:
            return
        filled -= 1
    i = filled
    while i > 0 and row[i - 1] < value:
        row[i] = row[i - 1]
        i -= 1
    row[i] = value


@njit(cache=True, nogil=True)
def _top_count(window: np.ndarray, row: np.ndarray) -> None:
    """``row`` = the len(row) largest values of the full ``window``, descending."""
    for i in range(row.shape[0]):
        row[i] = -math.inf
    for i in range(window.shape[0]):
        _top_insert(row, row.shape[0], window[i])


@njit(cache=True, nogil=True)
def _tail_scaled_max(
    z: np.ndarray, top: np.ndarray, meta: np.ndarray, q: float, reference: float, min_n: int
) -> float:
    """max_k |z_k| * reference / max(reference, q-quantile of feature k's recent |z|).

    For a feature with normal tails the quantile is about ``reference`` (2.576 for
    q = 0.99) and |z| passes unchanged; a heavy-tailed one (a kurtosis, an integer lag)
    is measured in units of its own tail. Features with fewer than ``min_n`` recent
    values, and non-finite z (+inf for a feature gone non-finite), pass unchanged. The
    quantile is the order statistic of rank ceil(q n) - 1 (0-based, ascending) of the n
    recent values, read from the list of the largest (``top``, see :func:`_tail_learn`).
    """
    best = 0.0
    for k in range(z.size):
        v = z[k]
        if math.isnan(v):
            continue
        a = abs(v)
        n = int(meta[k, 0])
        if n >= min_n and math.isfinite(a):
            rank = min(n - 1, max(0, math.ceil(q * n) - 1))
            tau = top[k, n - 1 - rank]
            if tau > reference:
                a = a * reference / tau
        if a > best:
            best = a
    return best


# ------------------------------------------------------------------- robust (median/MAD)


# Up to this many values, a search counts the values below the key instead of halving:
# the count runs in vector lanes with no branch, the halving mispredicts about every
# other step (measured on 64 values: 7 ns against 60 for a pair of searches; even at
# 1,024 values 82 against 109). The windows here hold tens to hundreds of values.
COUNT_SEARCH_MAX = 512


@njit(cache=True, nogil=True)
def _bisect_left(a: np.ndarray, n: int, value: float) -> int:
    """First index i in the sorted ``a[:n]`` with a[i] >= value (n if none): the number
    of values below ``value``, counted, or for long arrays found by halving."""
    if n <= COUNT_SEARCH_MAX:
        below = 0
        for m in range(n):
            below += a[m] < value
        return below
    base = 0
    size = n
    while size > 1:
        half = size >> 1
        if a[base + half] < value:
            base += half
        size -= half
    return base + 1 if a[base] < value else base


# The shifts below index with unsigned integers: Numba then leaves out the wraparound of
# negative indices, and LLVM turns the loops into memmove (about 5x faster).


@njit(cache=True, nogil=True)
def _shift_down(a: np.ndarray, lo: int, hi: int) -> None:
    """a[lo:hi] = a[lo + 1:hi + 1], element by element from lo up."""
    one = np.uint64(1)
    m = np.uint64(lo)
    end = np.uint64(hi)
    while m < end:
        a[m] = a[m + one]
        m += one


@njit(cache=True, nogil=True)
def _shift_up(a: np.ndarray, lo: int, hi: int) -> None:
    """a[lo + 1:hi + 1] = a[lo:hi], element by element from hi down."""
    one = np.uint64(1)
    m = np.uint64(hi)
    start = np.uint64(lo)
    while m > start:
        a[m] = a[m - one]
        m -= one


@njit(cache=True, nogil=True)
def _bisect_left_pair(a: np.ndarray, n: int, u: float, v: float) -> tuple[int, int]:
    """``(_bisect_left(a, n, u), _bisect_left(a, n, v))`` in one pass over ``a[:n]``, or
    for long arrays the two halvings in lockstep (their loads overlap)."""
    if n <= COUNT_SEARCH_MAX:
        below_u = 0
        below_v = 0
        for m in range(n):
            x = a[m]
            below_u += x < u
            below_v += x < v
        return below_u, below_v
    bu = 0
    bv = 0
    size = n
    while size > 1:
        half = size >> 1
        if a[bu + half] < u:
            bu += half
        if a[bv + half] < v:
            bv += half
        size -= half
    return (bu + 1 if a[bu] < u else bu), (bv + 1 if a[bv] < v else bv)


@njit(cache=True, nogil=True)
def _sorted_replace(a: np.ndarray, n: int, old: float, new: float) -> None:
    """Replace one ``old`` by ``new`` in the sorted prefix ``a[:n]``, moving only the
    values between the two positions."""
    i, j = _bisect_left_pair(a, n, old, new)
    if i >= n:
        i = n - 1
    if j > i:
        _shift_down(a, i, j - 1)
        a[j - 1] = new
    else:
        _shift_up(a, j, i)
        a[j] = new


@njit(cache=True, nogil=True)
def _sorted_insert(a: np.ndarray, n: int, value: float) -> None:
    """Insert ``value`` into the sorted prefix ``a[:n]`` (``a`` has room for n + 1)."""
    i = _bisect_left(a, n, value)
    _shift_up(a, i, n)
    a[i] = value


@njit(cache=True, nogil=True)
def _median_sorted(a: np.ndarray, n: int) -> float:
    if n == 0:
        return math.nan
    h = n // 2
    return float(a[h]) if n % 2 else 0.5 * float(a[h - 1] + a[h])


@njit(cache=True, nogil=True)
def _mad_sorted(a: np.ndarray, n: int, center: float) -> tuple[float, float]:
    """Median and mean of |a - center| over the sorted ``a[:n]``, in O(n).

    The deviations are read in increasing order by walking outwards from the center.
    """
    if n == 0:
        return math.nan, math.nan
    right = _bisect_left(a, n, center)
    left = right - 1
    lo_rank = (n - 1) // 2
    hi_rank = n // 2
    lo = hi = 0.0
    total = 0.0
    for r in range(n):
        if left >= 0 and (right >= n or center - a[left] <= a[right] - center):
            dev = center - a[left]
            left -= 1
        else:
            dev = a[right] - center
            right += 1
        total += dev
        if r == lo_rank:
            lo = dev
        if r == hi_rank:
            hi = dev
    return 0.5 * (lo + hi), total / n


@njit(cache=True, nogil=True)
def _robust_learn(
    x: np.ndarray,
    ring: np.ndarray,
    srt: np.ndarray,
    meta: np.ndarray,
    center: np.ndarray,
    spread: np.ndarray,
    refresh_per_call: int,
    quantum: np.ndarray,
) -> None:
    """Slide ``x`` into each feature's window; update medians, refresh some spreads.

    ``ring``/``srt`` are ``(d, W)``: the window in arrival order and sorted. ``meta`` is
    ``(d + 1, 3)``: per feature fill, head and finite streak; the last row holds the
    round-robin cursor of the spread refresh, so no call ever costs more than
    ``refresh_per_call`` O(W) passes. Also updates the resolution ``quantum``.
    """
    _quantum_learn(x, quantum)
    d, w = ring.shape
    for k in range(d):
        v = x[k]
        if not math.isfinite(v):
            meta[k, 2] = 0.0
            continue
        meta[k, 2] += 1.0
        n = int(meta[k, 0])
        head = int(meta[k, 1])
        row = srt[k]
        if n == w:
            _sorted_replace(row, n, ring[k, head], v)
        else:
            _sorted_insert(row, n, v)
            n += 1
        ring[k, head] = v
        meta[k, 0] = n
        meta[k, 1] = (head + 1) % w
        center[k] = _median_sorted(row, n)
    cursor = int(meta[d, 0])
    for _ in range(min(refresh_per_call, d)):
        k = cursor
        n = int(meta[k, 0])
        if n > 0:
            mad, mean_abs = _mad_sorted(srt[k], n, center[k])
            # 1.4826 MAD and 1.2533 mean |dev| both estimate sigma for a normal sample;
            # the second keeps a feature that is mostly constant from having zero spread.
            spread[k] = 1.4826 * mad if mad > 0.0 else 1.2533 * mean_abs
        cursor = (cursor + 1) % d
    meta[d, 0] = cursor


@njit(cache=True, nogil=True)
def _robust_z(
    x: np.ndarray,
    meta: np.ndarray,
    center: np.ndarray,
    spread: np.ndarray,
    quantum: np.ndarray,
    rel_floor: float,
    abs_floor: float,
    min_streak: float,
    z: np.ndarray,
) -> float:
    """Like :func:`_welford_z` with median and scaled MAD, floored by the feature's
    resolution ``quantum[k, 1]`` (see :func:`_quantum_learn`)."""
    best = 0.0
    for k in range(x.size):
        s = max(spread[k], _spread_floor(center[k], rel_floor, abs_floor))
        # A discrete feature (a binned peak position, an integer lag) that sat on one
        # value for a whole window has MAD 0: one step of its resolution is one spread.
        s = max(s, quantum[k, 1])
        zk = _deviation(x[k], center[k], s, meta[k, 0], meta[k, 2], min_streak)
        z[k] = zk
        if not math.isnan(zk) and abs(zk) > best:
            best = abs(zk)
    return best


# ------------------------------------------------------- fused z-detector steps (speed)


@njit(cache=True, nogil=True)
def _zscore_score(
    x: np.ndarray,
    stats: np.ndarray,
    rel_floor: float,
    abs_floor: float,
    min_streak: float,
    quantum: np.ndarray,
    z: np.ndarray,
    tail_top: np.ndarray,
    tail_meta: np.ndarray,
    q: float,
    reference: float,
    min_n: int,
) -> float:
    """:func:`_welford_z`, then :func:`_tail_scaled_max` if a tail window exists."""
    best = _welford_z(x, stats, rel_floor, abs_floor, min_streak, quantum, z)
    if tail_top.shape[0] == 0:
        return best
    return _tail_scaled_max(z, tail_top, tail_meta, q, reference, min_n)


@njit(cache=True, nogil=True)
def _zscore_learn(
    x: np.ndarray,
    z: np.ndarray,
    stats: np.ndarray,
    quantum: np.ndarray,
    tail_ring: np.ndarray,
    tail_top: np.ndarray,
    tail_meta: np.ndarray,
) -> None:
    """Learn ``x`` whose z under the current statistics is ``z``."""
    if tail_top.shape[0] != 0:
        _tail_learn(z, tail_ring, tail_top, tail_meta)
    _welford_learn(x, stats)
    _quantum_learn(x, quantum)


@njit(cache=True, nogil=True)
def _robust_score(
    x: np.ndarray,
    meta: np.ndarray,
    center: np.ndarray,
    spread: np.ndarray,
    quantum: np.ndarray,
    rel_floor: float,
    abs_floor: float,
    min_streak: float,
    z: np.ndarray,
    tail_top: np.ndarray,
    tail_meta: np.ndarray,
    q: float,
    reference: float,
    min_n: int,
) -> float:
    """:func:`_robust_z`, then :func:`_tail_scaled_max` if a tail window exists."""
    best = _robust_z(x, meta, center, spread, quantum, rel_floor, abs_floor, min_streak, z)
    if tail_top.shape[0] == 0:
        return best
    return _tail_scaled_max(z, tail_top, tail_meta, q, reference, min_n)


@njit(cache=True, nogil=True)
def _robust_learn_scored(
    x: np.ndarray,
    z: np.ndarray,
    ring: np.ndarray,
    srt: np.ndarray,
    meta: np.ndarray,
    center: np.ndarray,
    spread: np.ndarray,
    refresh_per_call: int,
    quantum: np.ndarray,
    tail_ring: np.ndarray,
    tail_top: np.ndarray,
    tail_meta: np.ndarray,
) -> None:
    """Learn ``x`` whose robust z under the current window is ``z``."""
    if tail_top.shape[0] != 0:
        _tail_learn(z, tail_ring, tail_top, tail_meta)
    _robust_learn(x, ring, srt, meta, center, spread, refresh_per_call, quantum)


# ------------------------------------------------------------------- half-space trees


@njit(cache=True, nogil=True)
def _hst_learn(
    z: np.ndarray, feature: np.ndarray, split: np.ndarray, mass: np.ndarray, state: np.ndarray
) -> None:
    """Add standardised ``z`` to the latest window's masses; swap windows when full.

    ``mass`` is ``(2, trees, nodes)``; ``state`` is ``[latest, count, window, swaps]``.
    A swap flips which half is the reference and zeroes the other: O(trees * nodes),
    a few microseconds, never a rebuild.
    """
    latest = state[0]
    trees, internal = feature.shape
    for t in range(trees):
        node = 0
        mass[latest, t, 0] += 1.0
        while node < internal:
            node = 2 * node + 1 if z[feature[t, node]] < split[t, node] else 2 * node + 2
            mass[latest, t, node] += 1.0
    state[1] += 1
    if state[1] >= state[2]:
        state[0] = 1 - latest
        mass[1 - latest] = 0.0
        state[1] = 0
        state[3] += 1


@njit(cache=True, nogil=True)
def _hst_score(
    z: np.ndarray,
    feature: np.ndarray,
    split: np.ndarray,
    mass: np.ndarray,
    state: np.ndarray,
    size_limit: float,
) -> float:
    """Mean over trees of r * 2^depth at the deepest node whose reference mass r is at
    least ``size_limit`` (Tan, Ting & Liu 2011): large for dense regions, 0 when empty."""
    ref = 1 - state[0]
    trees, internal = feature.shape
    total = 0.0
    for t in range(trees):
        node = 0
        depth = 0
        while node < internal and mass[ref, t, node] >= size_limit:
            node = 2 * node + 1 if z[feature[t, node]] < split[t, node] else 2 * node + 2
            depth += 1
        total += mass[ref, t, node] * 2.0**depth
    return float(total / trees)


@njit(cache=True, nogil=True)
def _hst_learn_x(
    x: np.ndarray,
    stats: np.ndarray,
    z: np.ndarray,
    feature: np.ndarray,
    split: np.ndarray,
    mass: np.ndarray,
    state: np.ndarray,
) -> None:
    """Standardise ``x`` (before learning it), learn it into the standardiser and trees."""
    _standardise(x, stats, 1e-4, 1e-12, z)
    _welford_learn(x, stats)
    _hst_learn(z, feature, split, mass, state)


@njit(cache=True, nogil=True)
def _hst_score_x(
    x: np.ndarray,
    stats: np.ndarray,
    z: np.ndarray,
    feature: np.ndarray,
    split: np.ndarray,
    mass: np.ndarray,
    state: np.ndarray,
    size_limit: float,
) -> float:
    _standardise(x, stats, 1e-4, 1e-12, z)
    return _hst_score(z, feature, split, mass, state, size_limit)


# ------------------------------------------------------------------------------- LODA


@njit(cache=True, nogil=True)
def _loda_project(z: np.ndarray, index: np.ndarray, weight: np.ndarray, out: np.ndarray) -> None:
    for p in range(index.shape[0]):
        s = 0.0
        for j in range(index.shape[1]):
            s += weight[p, j] * z[index[p, j]]
        out[p] = s


@njit(cache=True, nogil=True)
def _loda_bin(value: float, mean: float, sd: float, bins: int, half_range: float) -> int:
    """Bin 1..bins inside mean +- half_range * sd; 0 and bins + 1 are the overflow bins."""
    u = (value - mean) / sd
    if u < -half_range:
        return 0
    if u >= half_range:
        return bins + 1
    b = int((u + half_range) / (2.0 * half_range) * bins)
    return 1 + min(b, bins - 1)


@njit(cache=True, nogil=True)
def _loda_learn(
    proj: np.ndarray,
    counts: np.ndarray,
    scale: np.ndarray,
    pstats: np.ndarray,
    state: np.ndarray,
    half_range: float,
) -> None:
    """Count the projections ``proj`` in the latest window's histograms.

    ``counts`` is ``(2, P, bins + 2)``, ``scale`` ``(2, P, 2)`` (mean, sd the histograms
    were binned with), ``pstats`` ``(P, 3)`` a Welford block of the projections seen in
    the latest window, ``state`` ``[latest, count, window, swaps]``. When the window is
    full the latest histograms become the reference and a fresh window starts, binned
    with the mean and sd of the projections of the window just closed.
    """
    latest = state[0]
    bins = counts.shape[2] - 2
    for p in range(proj.size):
        v = proj[p]
        b = _loda_bin(v, scale[latest, p, 0], scale[latest, p, 1], bins, half_range)
        counts[latest, p, b] += 1.0
        c = pstats[p, 0] + 1.0
        delta = v - pstats[p, 1]
        pstats[p, 1] += delta / c
        pstats[p, 2] += delta * (v - pstats[p, 1])
        pstats[p, 0] = c
    state[1] += 1
    if state[1] >= state[2]:
        fresh = 1 - latest
        counts[fresh] = 0.0
        for p in range(proj.size):
            c = pstats[p, 0]
            sd = math.sqrt(pstats[p, 2] / (c - 1.0)) if c > 1.0 else 1.0
            scale[fresh, p, 0] = pstats[p, 1]
            scale[fresh, p, 1] = sd if sd > 1e-12 else 1.0
            pstats[p, 0] = 0.0
            pstats[p, 1] = 0.0
            pstats[p, 2] = 0.0
        state[0] = fresh
        state[1] = 0
        state[3] += 1


@njit(cache=True, nogil=True)
def _loda_score(
    proj: np.ndarray,
    counts: np.ndarray,
    scale: np.ndarray,
    state: np.ndarray,
    half_range: float,
    alpha: float,
) -> float:
    """Mean over projections of -log(histogram density) under the reference window."""
    ref = 1 - state[0]
    bins = counts.shape[2] - 2
    n = float(state[2])
    width = 2.0 * half_range / bins
    total = 0.0
    for p in range(proj.size):
        b = _loda_bin(proj[p], scale[ref, p, 0], scale[ref, p, 1], bins, half_range)
        density = (counts[ref, p, b] + alpha) / (n + alpha * (bins + 2))
        if 1 <= b <= bins:
            density /= width
        total -= math.log(density)
    return total / proj.size


@njit(cache=True, nogil=True)
def _loda_learn_projected(
    x: np.ndarray,
    stats: np.ndarray,
    proj: np.ndarray,
    counts: np.ndarray,
    scale: np.ndarray,
    pstats: np.ndarray,
    state: np.ndarray,
    half_range: float,
) -> None:
    """``_loda_learn_x`` for an ``x`` that ``_loda_score_x`` has just projected into
    ``proj`` with the same ``stats``: the standardisation and projection are not redone."""
    _welford_learn(x, stats)
    _loda_learn(proj, counts, scale, pstats, state, half_range)


@njit(cache=True, nogil=True)
def _loda_learn_x(
    x: np.ndarray,
    stats: np.ndarray,
    z: np.ndarray,
    index: np.ndarray,
    weight: np.ndarray,
    proj: np.ndarray,
    counts: np.ndarray,
    scale: np.ndarray,
    pstats: np.ndarray,
    state: np.ndarray,
    half_range: float,
) -> None:
    _standardise(x, stats, 1e-4, 1e-12, z)
    _loda_project(z, index, weight, proj)
    _loda_learn_projected(x, stats, proj, counts, scale, pstats, state, half_range)


@njit(cache=True, nogil=True)
def _loda_score_x(
    x: np.ndarray,
    stats: np.ndarray,
    z: np.ndarray,
    index: np.ndarray,
    weight: np.ndarray,
    proj: np.ndarray,
    counts: np.ndarray,
    scale: np.ndarray,
    state: np.ndarray,
    half_range: float,
    alpha: float,
) -> float:
    _standardise(x, stats, 1e-4, 1e-12, z)
    _loda_project(z, index, weight, proj)
    return _loda_score(proj, counts, scale, state, half_range, alpha)


# --------------------------------------------------------------- conformal calibration


@njit(cache=True, nogil=True)
def _calib_add(score: float, ring: np.ndarray, state: np.ndarray, tail: np.ndarray) -> None:
    """Add a normal frame's score to the calibration set; refit the tail now and then.

    ``ring`` is ``(2, size)``: the scores in arrival order and the same scores sorted
    (kept sorted by moving only the values between the old and new positions).
    ``state`` is ``[n, head, since_refit, refit_every]``; ``tail`` is
    ``[u, beta, k or fraction, base]``: the k-th largest score u, the (inflated) mean
    excess beta of the k largest over u, and base = -log10((k + 1) / (n + 1)).
    """
    size = ring.shape[1]
    n = state[0]
    head = state[1]
    if n == size:
        _sorted_replace(ring[1], n, ring[0, head], score)
    else:
        _sorted_insert(ring[1], n, score)
        n += 1
        state[0] = n
    ring[0, head] = score
    state[1] = (head + 1) % size
    state[2] += 1
    if state[2] >= state[3] or n < 64:
        _calib_refit(ring, state, tail)
        state[2] = 0


@njit(cache=True, nogil=True)
def _calib_refit(ring: np.ndarray, state: np.ndarray, tail: np.ndarray) -> None:
    n = state[0]
    if n == 0:
        return
    k = max(10, int(tail[2] * n)) if tail[2] < 1.0 else int(tail[2])
    k = min(k, n)
    srt = ring[1]
    u = srt[n - k]
    excess = 0.0
    for i in range(n - k, n):
        excess += srt[i] - u
    # The mean excess of k points is uncertain by ~1/sqrt(k); erring on the heavy side
    # keeps a small calibration set from promising p-values it cannot back.
    beta = excess / k * (1.0 + 2.0 / math.sqrt(k))
    # A tail of near-ties (a discrete feature dominating the score) has a tiny mean
    # excess; never assume a lighter tail than the exponential through the median and u.
    if n >= 4 * k:
        beta = max(beta, (u - srt[n // 2]) / math.log(n / (2.0 * k)))
    floor = 1e-9 + 1e-6 * abs(u)
    tail[0] = u
    tail[1] = beta if beta > floor else floor
    tail[3] = -math.log10((k + 1.0) / (n + 1.0))


@njit(cache=True, nogil=True)
def _calib_surprise(score: float, ring: np.ndarray, state: np.ndarray, tail: np.ndarray) -> float:
    """-log10 of the conformal p-value of ``score``, (1 + #{calibration >= s}) / (n + 1);
    beyond the k-th largest calibration score the empirical tail is replaced by an
    exponential fit (peaks over threshold). O(log n)."""
    n = state[0]
    if n == 0:
        return 0.0
    if math.isnan(score) or score == math.inf:
        return math.inf
    u = tail[0]
    if score > u:
        return float(tail[3] + (score - u) / (tail[1] * _LN10))
    above = n - _bisect_left(ring[1], n, score)
    return -math.log10((above + 1.0) / (n + 1.0))


@njit(cache=True, nogil=True)
def _calib_surprise_all(
    scores: np.ndarray,
    rings: np.ndarray,
    states: np.ndarray,
    tails: np.ndarray,
    min_n: int,
    out: np.ndarray,
) -> None:
    """:func:`_calib_surprise` for every detector at once (0 below ``min_n`` scores)."""
    for j in range(scores.size):
        if states[j, 0] >= min_n:
            out[j] = _calib_surprise(scores[j], rings[j], states[j], tails[j])
        else:
            out[j] = 0.0


@njit(cache=True, nogil=True)
def _calib_add_all(
    scores: np.ndarray, ready: np.ndarray, rings: np.ndarray, states: np.ndarray, tails: np.ndarray
) -> None:
    """:func:`_calib_add` for every detector that is ready and scored a finite value."""
    for j in range(scores.size):
        if ready[j] and math.isfinite(scores[j]):
            _calib_add(scores[j], rings[j], states[j], tails[j])


@njit(cache=True, nogil=True)
def _calib_quantile(ring: np.ndarray, state: np.ndarray, q: float) -> float:
    """The q-quantile (nearest rank) of the calibration scores."""
    n = state[0]
    if n == 0:
        return math.inf
    rank = min(n - 1, max(0, math.ceil(q * n) - 1))
    return float(ring[1, rank])


# ------------------------------------------------------------------------------ fusion


@njit(cache=True, nogil=True)
def _cauchy_surprise(surprise: np.ndarray, weight: np.ndarray) -> float:
    """Cauchy combination (Liu & Xie 2020) of p-values given as s = -log10 p.

    t = sum_i w_i cot(pi p_i) / sum w (cot(pi p) = tan((1/2 - p) pi), exact for small
    p), p = atan(1 / t) / pi for t > 0. Each p_i is capped at 0.9 first: a p-value near 1
    maps to a huge negative variate that would otherwise cancel a real signal (the usual
    truncation of the method). Beyond s = 300, p underflows and the exact tail form
    p = 1 / sum_i (w_i / sum w) / p_i is summed in the log domain.
    """
    wsum = 0.0
    big = 0.0
    for i in range(surprise.size):
        wsum += weight[i]
        if weight[i] > 0.0 and surprise[i] > big:
            big = surprise[i]
    if big == math.inf:
        return math.inf
    if big < 300.0:
        t = 0.0
        for i in range(surprise.size):
            p = min(10.0 ** -surprise[i], 0.9)
            t += weight[i] / math.tan(math.pi * p)
        t /= wsum
        p = math.atan(1.0 / t) / math.pi if t > 0.0 else 0.5 - math.atan(t) / math.pi
        return -math.log10(min(1.0, p))
    acc = 0.0
    for i in range(surprise.size):
        if weight[i] > 0.0:
            acc += weight[i] / wsum * 10.0 ** (surprise[i] - big)
    return big + math.log10(acc)


# ------------------------------------------------------------------------------- drift


@njit(cache=True, nogil=True)
def _block_add(z: np.ndarray, total: np.ndarray, count: np.ndarray, clip: float) -> None:
    """Add z (clipped to +-clip, non-finite skipped) to a block's running sums."""
    for k in range(z.size):
        v = z[k]
        if math.isfinite(v):
            total[k] += min(max(v, -clip), clip)
            count[k] += 1.0


@njit(cache=True, nogil=True)
def _page_hinkley(
    x: np.ndarray,
    state: np.ndarray,
    delta: float,
    threshold: float,
    min_samples: float,
    stat: np.ndarray,
) -> int:
    """Two-sided Page-Hinkley test per feature; returns how many features fired.

    ``state`` is ``(d, 6)``: n, running mean, the cumulative sums m_up = sum(x - mean -
    delta) and m_down = sum(x - mean + delta), min(m_up) and max(m_down). A feature
    fires when m_up - min(m_up) or max(m_down) - m_down exceeds ``threshold`` after
    ``min_samples``; ``stat[k]`` gets the signed statistic (positive for an increase,
    kept at its firing value) and a feature that fires is reset. Non-finite x is skipped.
    """
    fired = 0
    for k in range(x.size):
        v = x[k]
        if not math.isfinite(v):
            stat[k] = 0.0
            continue
        n = state[k, 0] + 1.0
        mean = state[k, 1] + (v - state[k, 1]) / n
        up = state[k, 2] + v - mean - delta
        down = state[k, 3] + v - mean + delta
        up_min = min(state[k, 4], up)
        down_max = max(state[k, 5], down)
        rise = up - up_min
        fall = down_max - down
        stat[k] = rise if rise >= fall else -fall
        if n >= min_samples and max(rise, fall) > threshold:
            fired += 1
            state[k, :] = 0.0
            continue
        state[k, 0] = n
        state[k, 1] = mean
        state[k, 2] = up
        state[k, 3] = down
        state[k, 4] = up_min
        state[k, 5] = down_max
    return fired


@njit(cache=True, nogil=True)
def _adwin(
    x: np.ndarray,
    ring: np.ndarray,
    meta: np.ndarray,
    delta: float,
    min_window: int,
    check: bool,
    shift: np.ndarray,
) -> int:
    """ADWIN over a bounded window per feature; returns how many features cut.

    ``ring`` is ``(d, W)``, ``meta`` ``(d, 2)`` (fill, head). When ``check`` is set,
    every split of each window into an older part W0 and a newer part W1 (each at least
    ``min_window`` long) is tested as in Bifet & Gavalda (2007) with the variance-aware
    bound of their ADWIN2 (as River computes it): |mu0 - mu1| > sqrt(2 v L / m) +
    2 L / (3 m), m = 1 / (1/n0 + 1/n1), L = ln(2 ln(n) / delta), v the window's
    variance. On a cut the older part is dropped and
    ``shift[k]`` gets mu1 - mu0 (else 0). O(W) per feature per check.
    """
    d, w = ring.shape
    cut = 0
    for k in range(d):
        shift[k] = 0.0
        v = x[k]
        if not math.isfinite(v):
            continue
        n = int(meta[k, 0])
        head = int(meta[k, 1])
        ring[k, head] = v
        meta[k, 1] = (head + 1) % w
        if n < w:
            n += 1
            meta[k, 0] = n
        if not check or n < 2 * min_window:
            continue
        start = (head + 1 - n) % w  # oldest element
        total = 0.0
        total2 = 0.0
        for i in range(n):
            e = ring[k, (start + i) % w]
            total += e
            total2 += e * e
        mean = total / n
        var = max(total2 / n - mean * mean, 0.0)
        log_term = math.log(2.0 * math.log(n) / delta)
        s0 = 0.0
        best = 0.0
        best_i = 0
        for i in range(n - 1):
            s0 += ring[k, (start + i) % w]
            n0 = i + 1
            n1 = n - n0
            if n0 < min_window or n1 < min_window:
                continue
            mu0 = s0 / n0
            mu1 = (total - s0) / n1
            m = 1.0 / (1.0 / n0 + 1.0 / n1)
            eps = math.sqrt(2.0 * var * log_term / m) + 2.0 * log_term / (3.0 * m)
            gap = abs(mu1 - mu0) - eps
            if gap > best:
                best = gap
                best_i = n0
                shift[k] = mu1 - mu0
        if best_i > 0:
            cut += 1
            meta[k, 0] = n - best_i
    return cut


# -------------------------------------------------------------- alarm switch and onset


@njit(cache=True, nogil=True)
def _hysteresis(
    state: np.ndarray, threshold: float, release: float, release_frames: int, score: float
) -> int:
    """One step of the alarm switch; 0 no change, 1 the alarm starts, 2 it ends.

    ``state`` is ``[active (0/1), peak, quiet]``: an alarm starts above ``threshold`` and
    ends after ``release_frames`` consecutive scores at or below ``release``.
    """
    if state[0] == 0.0:
        if score > threshold:
            state[0] = 1.0
            state[1] = score
            state[2] = 0.0
            return 1
        return 0
    if score > state[1]:
        state[1] = score
    state[2] = state[2] + 1.0 if score <= release else 0.0
    if state[2] >= release_frames:
        state[0] = 0.0
        return 2
    return 0


@njit(cache=True, nogil=True)
def _cusum(state: np.ndarray, index: int, surprise: float, reference: float, cap: float) -> None:
    """One step of the onset CUSUM; ``state`` is ``[sum, start, slow mean]``.

    S = max(0, S + min(s, cap) - max(reference, m + 1/2)), m a slow running mean of
    min(s, 5); when S returns to 0 the next excursion starts at the next frame.
    """
    s = surprise if surprise < cap else cap
    state[2] += 0.01 * ((s if s < 5.0 else 5.0) - state[2])
    k = state[2] + 0.5
    total = state[0] + s - (k if k > reference else reference)
    if total <= 0.0:
        state[0] = 0.0
        state[1] = index + 1
    else:
        state[0] = total


# ------------------------------------------------- the whole stack in one call (speed)

# The detector stack of z-type detectors (``ZScore``, ``RobustZScore``) runs each frame
# after warm-up as one call of :func:`_stack_frame`: Numba's dispatcher costs per call
# and per argument, and the stack used to make about ten calls a frame. Its scalars live
# in two float vectors: ``p`` (parameters, set once) and ``rt`` (per-frame results and
# state). Layouts (literals here: Numba's cache only sees edits to this module):
P_THRESHOLD = 0
P_RELEASE = 1
P_RELEASE_FRAMES = 2
P_LEARN_BELOW = 3
P_CRITICAL = 4
P_SETTLE = 5  # calibration size below which an alarm needs the critical level
P_MIN_CAL = 6
P_FROZEN = 7
P_FUSION = 8  # FUSION_* below
P_VOTE_K = 9
P_CUSUM_REF = 10
P_CUSUM_CAP = 11
P_Z_REL = 12  # ZScore: rel_floor, abs_floor, min_streak, tail q, reference, min_n
P_Z_ABS = 13
P_Z_STREAK = 14
P_Z_Q = 15
P_Z_REF = 16
P_Z_MIN_N = 17
P_R_REL = 18  # RobustZScore: rel_floor, abs_floor, min_streak, refresh_per_frame
P_R_ABS = 19
P_R_STREAK = 20
P_R_REFRESH = 21
P_EXPLAINER = 22  # KIND_* of the first z-type detector, whose z feed drift detection
P_N = 23  # number of detectors J
P_KIND = 24  # J entries (KIND_*), then J fusion weights
KIND_ZSCORE = 0
KIND_ROBUST = 1
KIND_EXTERNAL = 2  # a score set from outside (the LSTM's slot): never learns, never ready
FUSION_CAUCHY = 0
FUSION_MIN = 1
FUSION_VOTE = 2

RT_FUSED = 0  # the frame's fused surprise
RT_ONSET = 1  # onset frame of an alarm that starts or escalates
RT_CRITICAL = 2  # the alarm under way has reached the critical level
RT_ALL_READY = 3
RT_DET = 4  # J entries each: ready, scores, surprises, scratch

# status bits returned by _stack_frame: the alarm change (0 none, 1 start, 2 end,
# 3 escalate) in the low bits, and whether the drift block sums took this frame
CHANGE_MASK = 3
ESCALATE = 3
DRIFT_FED = 4


@njit(cache=True, nogil=True)
def _kth_largest(values: np.ndarray, k: int, scratch: np.ndarray) -> float:
    """The k-th largest of ``values`` (k >= 1), as ``np.partition(v, n - k)[n - k]``."""
    n = values.size
    for i in range(n):  # insertion sort of a handful of values, into scratch
        v = values[i]
        j = i
        while j > 0 and scratch[j - 1] > v:
            scratch[j] = scratch[j - 1]
            j -= 1
        scratch[j] = v
    return float(scratch[n - k])


@njit(cache=True, nogil=True)
def _stack_frame(
    x: np.ndarray,
    index: int,
    alarm: np.ndarray,
    cusum: np.ndarray,
    drift_sum: np.ndarray,
    drift_n: np.ndarray,
    drift_clip: float,
    p: np.ndarray,
    rt: np.ndarray,
    z_stats: np.ndarray,
    z_quantum: np.ndarray,
    z_z: np.ndarray,
    zt_ring: np.ndarray,
    zt_top: np.ndarray,
    zt_meta: np.ndarray,
    r_ring: np.ndarray,
    r_srt: np.ndarray,
    r_meta: np.ndarray,
    r_center: np.ndarray,
    r_spread: np.ndarray,
    r_quantum: np.ndarray,
    r_z: np.ndarray,
    cal_rings: np.ndarray,
    cal_states: np.ndarray,
    cal_tails: np.ndarray,
) -> int:
    """One frame of the detector stack after warm-up; returns the status bits.

    The same steps, in the same order and with the same kernels, as the stack's general
    path (``DetectorStack.update``): score every detector, turn the scores into
    surprises, fuse, CUSUM, alarm switch (a young calibration needs the critical level;
    escalation), then, with no alarm on, calibrate, learn clearly normal frames, update
    readiness, and add the explainer's z (the first z-type detector's) to the drift block
    sums.
    ``drift_n`` of size 0 means no drift watch. ``zt_*`` of size 0: no tail scale.
    """
    b = borrow  # no reference counting below (trajwatch._borrow)
    x, alarm, cusum, drift_sum, drift_n, p, rt = (
        b(x), b(alarm), b(cusum), b(drift_sum), b(drift_n), b(p), b(rt)
    )  # fmt: skip
    z_stats, z_quantum, z_z = b(z_stats), b(z_quantum), b(z_z)
    zt_ring, zt_top, zt_meta = b(zt_ring), b(zt_top), b(zt_meta)
    r_ring, r_srt, r_meta, r_center = b(r_ring), b(r_srt), b(r_meta), b(r_center)
    r_spread, r_quantum, r_z = b(r_spread), b(r_quantum), b(r_z)
    cal_rings, cal_states, cal_tails = b(cal_rings), b(cal_states), b(cal_tails)
    J = int(p[P_N])
    ready = rt[RT_DET : RT_DET + J]
    scores = rt[RT_DET + J : RT_DET + 2 * J]
    surprises = rt[RT_DET + 2 * J : RT_DET + 3 * J]
    scratch = rt[RT_DET + 3 * J : RT_DET + 4 * J]
    weights = p[P_KIND + J : P_KIND + 2 * J]
    for j in range(J):  # (an external slot's score is already in ``scores``)
        if p[P_KIND + j] == KIND_ZSCORE:
            scores[j] = _zscore_score(
                x, z_stats, p[P_Z_REL], p[P_Z_ABS], p[P_Z_STREAK], z_quantum, z_z, zt_top,
                zt_meta, p[P_Z_Q], p[P_Z_REF], int(p[P_Z_MIN_N]),
            )  # fmt: skip
        elif p[P_KIND + j] == KIND_ROBUST:
            scores[j] = _robust_z(
                x, r_meta, r_center, r_spread, r_quantum, p[P_R_REL], p[P_R_ABS],
                p[P_R_STREAK], r_z,
            )  # fmt: skip
    _calib_surprise_all(scores, cal_rings, cal_states, cal_tails, int(p[P_MIN_CAL]), surprises)
    method = p[P_FUSION]
    if method == FUSION_CAUCHY:
        fused = _cauchy_surprise(surprises, weights)
    elif method == FUSION_MIN:
        top = surprises[0]
        for j in range(1, J):
            if surprises[j] > top:
                top = surprises[j]
        fused = top - math.log10(J)
        if not fused > 0.0:
            fused = 0.0
    else:
        fused = _kth_largest(surprises, int(p[P_VOTE_K]), scratch)
    rt[RT_FUSED] = fused
    _cusum(cusum, index, fused, p[P_CUSUM_REF], p[P_CUSUM_CAP])
    threshold = p[P_THRESHOLD]
    critical = p[P_CRITICAL]
    level = fused
    if (
        alarm[0] == 0.0
        and level > threshold
        and level < critical
        and cal_states[0, 0] < p[P_SETTLE]
    ):
        level = threshold  # not enough calibration yet for a mild alarm
    change = _hysteresis(alarm, threshold, p[P_RELEASE], int(p[P_RELEASE_FRAMES]), level)
    if change == 1:
        rt[RT_CRITICAL] = 1.0 if fused >= critical else 0.0
        rt[RT_ONSET] = cusum[1] if cusum[1] < index else index
    elif alarm[0] != 0.0 and rt[RT_CRITICAL] == 0.0 and fused >= critical:
        rt[RT_CRITICAL] = 1.0
        change = ESCALATE
        rt[RT_ONSET] = index
    if alarm[0] != 0.0:
        return change
    if p[P_FROZEN] == 0.0:
        # calibration takes every frame judged normal; detectors only clearly normal ones
        for j in range(J):
            if ready[j] != 0.0 and math.isfinite(scores[j]):
                _calib_add(scores[j], cal_rings[j], cal_states[j], cal_tails[j])
        if fused < p[P_LEARN_BELOW]:
            for j in range(J):
                if p[P_KIND + j] == KIND_ZSCORE:
                    _zscore_learn(x, z_z, z_stats, z_quantum, zt_ring, zt_top, zt_meta)
                elif p[P_KIND + j] == KIND_ROBUST:
                    _robust_learn(
                        x, r_ring, r_srt, r_meta, r_center, r_spread, int(p[P_R_REFRESH]),
                        r_quantum,
                    )  # fmt: skip
            if rt[RT_ALL_READY] == 0.0:  # readiness never goes back
                all_ready = True
                for j in range(J):
                    ready[j] = 1.0 if _z_ready(p[P_KIND + j], z_stats, r_meta) else 0.0
                    all_ready = all_ready and ready[j] != 0.0
                rt[RT_ALL_READY] = 1.0 if all_ready else 0.0
    if drift_n.size == 0:
        return change
    _block_add(z_z if p[P_EXPLAINER] == KIND_ZSCORE else r_z, drift_sum, drift_n, drift_clip)
    return change | DRIFT_FED


@njit(cache=True, nogil=True)
def _z_ready(kind: float, z_stats: np.ndarray, r_meta: np.ndarray) -> bool:
    """``ZScore.ready`` (some feature seen twice) or ``RobustZScore.ready`` (three
    times); an external slot never is."""
    if kind == KIND_EXTERNAL:
        return False
    if kind == KIND_ZSCORE:
        d = z_stats.shape[1]
        if d == 0:
            return False
        top = z_stats[0, 0]
        for k in range(1, d):
            if z_stats[0, k] > top:
                top = z_stats[0, k]
        return bool(top >= 2.0)
    d = r_meta.shape[0] - 1
    if d == 0:
        return False
    top = r_meta[0, 0]
    for k in range(1, d):
        if r_meta[k, 0] > top:
            top = r_meta[k, 0]
    return bool(top >= 3.0)


drop_stale_cache(globals(), ("_borrow.py",))
