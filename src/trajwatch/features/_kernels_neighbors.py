"""Private Numba kernels for pairs of atoms: a cell grid and Verlet lists, O(N).

The grid bins atoms by fractional coordinate into cells whose perpendicular width is at
least the search radius, so every pair closer than the radius lies within ``reach`` cells
along each axis, for any cell shape: along axis a, |Δs_a| <= |Δr| / w_a, with w_a the
distance between opposite faces. Periodic images are enumerated explicitly, so pair
distances are the true minimum image even in strongly skewed cells (where rounding
fractional coordinates is not). A periodic axis with an empty slab wider than the radius
(a molecule in a huge box) is treated as open, so a huge cell costs no more than a small
one; the number of cells is capped at about 2N. Cells may be a half or a third of the
radius wide (searching 2 or 3 cells out) where that visits fewer atoms for the extra
cells: in a box less than about three radii across, cells a radius wide would search
every atom in 27 images (a 108-atom cell and the 6 Å RDF list: 480 µs instead of ~130).

Pairs are stored with a Cartesian shift so that, for unwrapped positions ``u``,
``u[j] - u[i] + shift`` is the pair vector as long as the cell does not change. An atom
and its own periodic images never form a pair.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_GAP_BINS = 64
#: the search's costs (ns, measured) for one neighbour cell visited and one atom tested
_CELL_NS = 4.0
_ATOM_NS = 2.7


@njit(cache=True, nogil=True)
def _grid_shape(
    extent: np.ndarray, periodic: np.ndarray, radius: float, n: int, sub: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Cells per axis and cells to search per axis for cells at least ``radius / sub``
    wide across ``extent`` (Å, per axis), at most about 2N cells; and the search's
    estimated cost per centre (ns)."""
    dims = np.ones(3, dtype=np.int64)
    reach = np.zeros(3, dtype=np.int64)
    for a in range(3):
        dims[a] = max(1, int(min(extent[a] * sub / radius, 1 << 20)))
    while dims[0] * dims[1] * dims[2] > 2 * n + 8:
        a = 0
        for b in range(1, 3):
            if dims[b] > dims[a]:
                a = b
        dims[a] = max(1, dims[a] // 2)
    visited = 1.0
    for a in range(3):
        if periodic[a] or dims[a] > 1:
            reach[a] = math.ceil(radius * dims[a] / extent[a])
        # a periodic axis searches images of its cells too; an open one only its own cells
        visited *= 2 * reach[a] + 1 if periodic[a] else min(2 * reach[a] + 1, dims[a])
    per_cell = n / (dims[0] * dims[1] * dims[2])
    return dims, reach, visited * (_CELL_NS + _ATOM_NS * per_cell)


@njit(cache=True, nogil=True)
def _grid(
    u: np.ndarray, cell: np.ndarray, inv: np.ndarray, pbc: np.ndarray, radius: float
) -> tuple[np.ndarray, ...]:
    """Bin atoms for a search within ``radius``; returns the grid as a tuple of arrays.

    ``frac`` (N, 3) binned fractional coordinates, ``offset`` (N, 3) integer lattice
    offsets (as floats) with ``u = (frac + offset + origin) @ cell`` (origin: 0, or the
    end of the empty slab of a periodic axis treated as open), ``coords`` (N, 3)
    cell coordinates, ``dims`` cells per axis, ``reach`` cells to search per axis,
    ``periodic`` whether an axis wraps, ``start``/``order`` the atoms of each cell.
    """
    n = u.shape[0]
    frac = np.empty((n, 3))
    offset = np.zeros((n, 3))
    coords = np.zeros((n, 3), dtype=np.int64)
    periodic = np.zeros(3, dtype=np.bool_)
    lo = np.zeros(3)
    span = np.ones(3)
    width = np.empty(3)
    for a in range(3):
        width[a] = 1.0 / math.sqrt(inv[0, a] ** 2 + inv[1, a] ** 2 + inv[2, a] ** 2)
    for i in range(n):
        for a in range(3):
            frac[i, a] = u[i, 0] * inv[0, a] + u[i, 1] * inv[1, a] + u[i, 2] * inv[2, a]
    occupied = np.zeros(_GAP_BINS, dtype=np.bool_)
    for a in range(3):
        origin = 0.0
        if pbc[a] and n > 0:
            occupied[:] = False
            for i in range(n):
                s = frac[i, a] - math.floor(frac[i, a])
                occupied[min(int(s * _GAP_BINS), _GAP_BINS - 1)] = True
            best = 0
            best_end = 0
            run = 0
            for b in range(2 * _GAP_BINS):  # twice round: the gap may wrap
                if occupied[b % _GAP_BINS]:
                    run = 0
                else:
                    run += 1
                    if run > best and run <= _GAP_BINS:
                        best = run
                        best_end = (b + 1) % _GAP_BINS
            periodic[a] = not (best < _GAP_BINS and best * width[a] / _GAP_BINS >= radius)
            if not periodic[a]:
                origin = best_end / _GAP_BINS  # occupied atoms start after the gap
        if pbc[a]:  # fold into [0, 1) from the origin; offsets keep u exact
            for i in range(n):
                s = frac[i, a] - origin
                k = math.floor(s)
                offset[i, a] = k
                frac[i, a] = s - k
        if not periodic[a] and n > 0:
            lo[a] = frac[0, a]
            hi = frac[0, a]
            for i in range(n):
                lo[a] = min(lo[a], frac[i, a])
                hi = max(hi, frac[i, a])
            span[a] = hi - lo[a]
    extent = span * width
    dims, reach, cost = _grid_shape(extent, periodic, radius, n, 1)
    for sub in range(2, 4):
        finer, finer_reach, finer_cost = _grid_shape(extent, periodic, radius, n, sub)
        if finer_cost < cost:
            dims, reach, cost = finer, finer_reach, finer_cost
    for a in range(3):
        for i in range(n):
            if span[a] > 0.0:
                c = int((frac[i, a] - lo[a]) / span[a] * dims[a])
                coords[i, a] = min(max(c, 0), dims[a] - 1)
    total = dims[0] * dims[1] * dims[2]
    start = np.zeros(total + 1, dtype=np.int64)
    for i in range(n):
        start[(coords[i, 0] * dims[1] + coords[i, 1]) * dims[2] + coords[i, 2] + 1] += 1
    for c in range(total):
        start[c + 1] += start[c]
    fill = start[:-1].copy()
    order = np.empty(n, dtype=np.int64)
    for i in range(n):
        c = (coords[i, 0] * dims[1] + coords[i, 1]) * dims[2] + coords[i, 2]
        order[fill[c]] = i
        fill[c] += 1
    return frac, offset, coords, dims, reach, periodic, start, order


@njit(cache=True, nogil=True)
def _pairs_within(
    u: np.ndarray,
    cell: np.ndarray,
    inv: np.ndarray,
    pbc: np.ndarray,
    radius: float,
    centers: np.ndarray,
    half: bool,
    pairs: np.ndarray,
    shifts: np.ndarray,
    best: np.ndarray,
    row_start: np.ndarray,
) -> int:
    """Every (i in ``centers``, j != i, image) closer than ``radius``; returns how many.

    Writes the first ``len(pairs)`` into ``pairs`` (i, j) and ``shifts`` (Cartesian, for
    the positions ``u`` given). ``half`` keeps i < j only. ``best[:3]`` gets the smallest
    distance found and its pair (inf, -1, -1 if none). Pairs come centre by centre:
    ``row_start[c]`` is where centre c's begin (if ``row_start`` is long enough).
    """
    frac, offset, coords, dims, reach, periodic, start, order = _grid(u, cell, inv, pbc, radius)
    n = u.shape[0]
    # Binned positions in Cartesian coordinates, stored cell after cell for the inner loop.
    xs = np.empty((n, 3))
    for p in range(n):
        j = order[p]
        for k in range(3):
            xs[p, k] = frac[j, 0] * cell[0, k] + frac[j, 1] * cell[1, k] + frac[j, 2] * cell[2, k]
    r2max = radius * radius
    count = 0
    # Scalars, not array reads: stores into pairs/shifts would otherwise force reloads.
    e0, e1, e2 = reach[0], reach[1], reach[2]
    n0, n1, n2 = dims[0], dims[1], dims[2]
    p0, p1, p2 = periodic[0], periodic[1], periodic[2]
    bmin = np.inf
    bi = -1
    bj = -1
    capacity = pairs.shape[0]
    for ci in range(centers.shape[0]):
        if ci < row_start.shape[0]:
            row_start[ci] = count
        i = centers[ci]
        xi = 0.0
        yi = 0.0
        zi = 0.0
        for k in range(3):
            x = frac[i, 0] * cell[0, k] + frac[i, 1] * cell[1, k] + frac[i, 2] * cell[2, k]
            if k == 0:
                xi = x
            elif k == 1:
                yi = x
            else:
                zi = x
        for d0 in range(-e0, e0 + 1):
            x0 = coords[i, 0] + d0
            m0 = 0
            if p0:  # wrap (loops, not integer division: this runs 27 N times)
                while x0 < 0:
                    x0 += n0
                    m0 -= 1
                while x0 >= n0:
                    x0 -= n0
                    m0 += 1
            elif x0 < 0 or x0 >= n0:
                continue
            for d1 in range(-e1, e1 + 1):
                x1 = coords[i, 1] + d1
                m1 = 0
                if p1:  # wrap (loops, not integer division: this runs 27 N times)
                    while x1 < 0:
                        x1 += n1
                        m1 -= 1
                    while x1 >= n1:
                        x1 -= n1
                        m1 += 1
                elif x1 < 0 or x1 >= n1:
                    continue
                for d2 in range(-e2, e2 + 1):
                    x2 = coords[i, 2] + d2
                    m2 = 0
                    if p2:  # wrap (loops, not integer division: this runs 27 N times)
                        while x2 < 0:
                            x2 += n2
                            m2 -= 1
                        while x2 >= n2:
                            x2 -= n2
                            m2 += 1
                    elif x2 < 0 or x2 >= n2:
                        continue
                    # the image this neighbour cell sits in, as a Cartesian shift
                    sx = m0 * cell[0, 0] + m1 * cell[1, 0] + m2 * cell[2, 0] - xi
                    sy = m0 * cell[0, 1] + m1 * cell[1, 1] + m2 * cell[2, 1] - yi
                    sz = m0 * cell[0, 2] + m1 * cell[1, 2] + m2 * cell[2, 2] - zi
                    c = (x0 * n1 + x1) * n2 + x2
                    for p in range(start[c], start[c + 1]):
                        dx = xs[p, 0] + sx
                        dy = xs[p, 1] + sy
                        dz = xs[p, 2] + sz
                        r2 = dx * dx + dy * dy + dz * dz
                        if r2 >= r2max:
                            continue
                        j = order[p]
                        if j == i or (half and j < i):
                            continue
                        if r2 < bmin:
                            bmin = r2
                            bi = i
                            bj = j
                        if count < capacity:
                            pairs[count, 0] = i
                            pairs[count, 1] = j
                            l0 = m0 + offset[i, 0] - offset[j, 0]
                            l1 = m1 + offset[i, 1] - offset[j, 1]
                            l2 = m2 + offset[i, 2] - offset[j, 2]
                            for k in range(3):
                                shifts[count, k] = (
                                    l0 * cell[0, k] + l1 * cell[1, k] + l2 * cell[2, k]
                                )
                        count += 1
    if centers.shape[0] < row_start.shape[0]:
        row_start[centers.shape[0]] = count
    best[0] = math.sqrt(bmin)
    best[1] = bi
    best[2] = bj
    return count


@njit(cache=True, nogil=True)
def _closest_pair(
    u: np.ndarray,
    cell: np.ndarray,
    inv: np.ndarray,
    pbc: np.ndarray,
    guess: float,
    out: np.ndarray,
) -> None:
    """``out[:3] = [d_min, i, j]`` over all pairs and images (i < j); NaN, -1, -1 if N < 2.

    Searches within ``guess`` Å, doubling until a pair turns up. O(N) per pass.
    """
    n = u.shape[0]
    out[0] = np.nan
    out[1] = -1.0
    out[2] = -1.0
    if n < 2:
        return
    # Atoms 0 and 1 are at most this far apart: the search is sure to end by then.
    d = np.empty((1, 3))
    for k in range(3):
        d[0, k] = u[1, k] - u[0, k]
    periodic = pbc[0] or pbc[1] or pbc[2]
    if periodic:
        _wrap(d, cell, inv, pbc)
    upper = math.sqrt(d[0, 0] ** 2 + d[0, 1] ** 2 + d[0, 2] ** 2)
    # a hair over the guess: the search keeps pairs strictly closer than its radius, and
    # the guess is often the closest distance itself (a pass wasted, doubling, without it)
    radius = guess * (1.0 + 1e-9) + 1e-9 if guess > 0.0 else 2.0
    centers = np.arange(n)
    nopairs = np.empty((0, 2), dtype=np.int64)
    noshifts = np.empty((0, 3))
    norows = np.empty(0, dtype=np.int64)
    half = n > 1  # a runtime bool: a literal True would compile a second specialisation
    for _ in range(64):
        radius = min(radius, upper * (1.0 + 1e-9) + 1e-9)
        _pairs_within(u, cell, inv, pbc, radius, centers, half, nopairs, noshifts, out, norows)
        if out[1] >= 0:
            return
        radius *= 2.0
    out[0] = np.nan


@njit(cache=True, nogil=True)
def _wrap(d: np.ndarray, cell: np.ndarray, inv: np.ndarray, pbc: np.ndarray) -> None:
    for i in range(d.shape[0]):
        s = np.zeros(3)
        for a in range(3):
            s[a] = d[i, 0] * inv[0, a] + d[i, 1] * inv[1, a] + d[i, 2] * inv[2, a]
            if pbc[a]:
                s[a] -= np.rint(s[a])
        for k in range(3):
            d[i, k] = s[0] * cell[0, k] + s[1] * cell[1, k] + s[2] * cell[2, k]


@njit(cache=True, nogil=True)
def _rebase(
    pairs: np.ndarray, shifts: np.ndarray, count: int, positions: np.ndarray, u: np.ndarray
) -> None:
    """Make shifts found for ``positions`` apply to the unwrapped ``u`` instead.

    u - positions is a lattice vector of the cell the atoms were unwrapped in, which is not
    the current cell if the cell changed: lists are therefore built from the frame's own
    positions and the difference is folded into each pair's shift.
    """
    for p in range(min(count, pairs.shape[0])):
        i = pairs[p, 0]
        j = pairs[p, 1]
        for k in range(3):
            shifts[p, k] += positions[j, k] - u[j, k] - positions[i, k] + u[i, k]


@njit(cache=True, nogil=True)
def _split_at_cutoff(
    u: np.ndarray, pairs: np.ndarray, shifts: np.ndarray, starts: np.ndarray, cutoff: float
) -> None:
    """Within each centre's pairs ``starts[m]:starts[m + 1]``, move the pairs closer than
    ``cutoff`` (now, on ``u``) ahead of the others.

    The list holds every pair within cutoff + skin, and about 40 % of them lie beyond the
    cutoff: in list order, :func:`_list_rdf`'s test is a coin toss that the processor
    mispredicts. Split like this once (when a list has lived long, see
    ``_kernels_update.RDF_SPLIT_AGE``), it stays split but for the few pairs that cross
    the cutoff later. The counts are integers, so their order does not change g(r).
    """
    c2 = cutoff * cutoff
    for m in range(starts.shape[0] - 1):
        lo = starts[m]
        hi = starts[m + 1] - 1
        while True:
            while lo <= hi and _pair_r2(u, pairs, shifts, lo) < c2:
                lo += 1
            while lo < hi and not _pair_r2(u, pairs, shifts, hi) < c2:
                hi -= 1
            if lo >= hi:
                break
            for k in range(2):
                pairs[lo, k], pairs[hi, k] = pairs[hi, k], pairs[lo, k]
            for k in range(3):
                shifts[lo, k], shifts[hi, k] = shifts[hi, k], shifts[lo, k]
            lo += 1
            hi -= 1


@njit(cache=True, nogil=True)
def _pair_r2(u: np.ndarray, pairs: np.ndarray, shifts: np.ndarray, p: int) -> float:
    """Squared length of listed pair ``p`` (as :func:`_list_rdf` computes it)."""
    i = pairs[p, 0]
    j = pairs[p, 1]
    dx = u[j, 0] - u[i, 0] + shifts[p, 0]
    dy = u[j, 1] - u[i, 1] + shifts[p, 1]
    dz = u[j, 2] - u[i, 2] + shifts[p, 2]
    return float(dx * dx + dy * dy + dz * dz)


@njit(cache=True, nogil=True)
def _list_min(
    u: np.ndarray, pairs: np.ndarray, shifts: np.ndarray, count: int, out: np.ndarray
) -> None:
    """``out[:3] = [d_min, i, j]`` over the first ``count`` listed pairs (inf if none)."""
    best = np.inf
    bp = -1
    for q in range(count):
        p = np.uint64(q)  # unsigned: no wraparound test per index (see _list_rdf)
        i = np.uint64(pairs[p, 0])
        j = np.uint64(pairs[p, 1])
        dx = u[j, 0] - u[i, 0] + shifts[p, 0]
        dy = u[j, 1] - u[i, 1] + shifts[p, 1]
        dz = u[j, 2] - u[i, 2] + shifts[p, 2]
        r2 = dx * dx + dy * dy + dz * dz
        if r2 < best:
            best = r2
            bp = q
    out[0] = math.sqrt(best)
    out[1] = pairs[bp, 0] if bp >= 0 else -1
    out[2] = pairs[bp, 1] if bp >= 0 else -1


@njit(cache=True, nogil=True)
def _list_rdf(
    u: np.ndarray,
    pairs: np.ndarray,
    shifts: np.ndarray,
    first: int,
    last: int,
    cutoff: float,
    counts: np.ndarray,
) -> None:
    """Add listed pairs ``first:last`` closer than ``cutoff`` to ``counts`` (cutoff/len bins)."""
    bins = counts.shape[0]
    dr = cutoff / bins
    c2 = cutoff * cutoff
    top = np.uint64(bins - 1)
    for q in range(last - first):
        # Every index here is valid and non-negative: as unsigned integers Numba leaves
        # out the wraparound of negative indices, a compare and select per index.
        p = np.uint64(first + q)
        i = np.uint64(pairs[p, 0])
        j = np.uint64(pairs[p, 1])
        dx = u[j, 0] - u[i, 0] + shifts[p, 0]
        dy = u[j, 1] - u[i, 1] + shifts[p, 1]
        dz = u[j, 2] - u[i, 2] + shifts[p, 2]
        r2 = dx * dx + dy * dy + dz * dz
        if r2 < c2:
            counts[min(np.uint64(math.sqrt(r2) / dr), top)] += 1
