"""Every Numba kernel against its plain NumPy reference (also run with NUMBA_DISABLE_JIT=1)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trajwatch.features import _kernels, _kernels_neighbors, _kernels_update, reference
from trajwatch.features._kernels import HIST_REL_ERROR, HIST_SIZE, HIST_UNDERFLOW

CELLS = {
    "none": None,
    "cubic": np.eye(3) * 7.0,
    "triclinic": np.array([[7.0, 0.0, 0.0], [2.1, 6.5, 0.0], [-1.3, 1.7, 8.2]]),
    # b and c lean almost onto a: rounding fractional coordinates misses the nearest image
    "skewed": np.array([[5.0, 0.0, 0.0], [4.7, 0.6, 0.0], [4.5, 0.4, 0.7]]),
}


def _kernel_cell(cell: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if cell is None:
        return np.eye(3), np.eye(3), np.zeros(3, dtype=np.bool_)
    return cell, np.linalg.inv(cell), np.ones(3, dtype=np.bool_)


def test_inverse_matches_numpy() -> None:
    m = CELLS["triclinic"]
    out = np.empty((3, 3))
    det = _kernels._inv3(m, out)
    np.testing.assert_allclose(out, np.linalg.inv(m), rtol=1e-13, atol=1e-15)
    assert det == pytest.approx(np.linalg.det(m), rel=1e-13)
    assert _kernels._inv3(np.zeros((3, 3)), out) == 0.0


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("n", [1, 2, 37])
def test_step_displacements_match_reference(name: str, n: int) -> None:
    rng = np.random.default_rng(n)
    cell, inv, pbc = _kernel_cell(CELLS[name])
    previous = rng.uniform(0, 7, size=(n, 3))
    positions = previous + rng.normal(scale=0.1, size=(n, 3))
    if CELLS[name] is not None:  # wrap into the cell so some atoms cross the boundary
        positions = (positions @ inv % 1.0) @ cell
    unwrapped = previous.copy()
    step = np.empty((n, 3))
    lengths = np.empty(n)
    _kernels._step_displacements(positions, previous, unwrapped, cell, inv, pbc, step, lengths)
    expected = reference.displacements(positions, previous, CELLS[name], pbc)
    np.testing.assert_allclose(lengths, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(unwrapped - previous, axis=1), expected, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(step, axis=1), expected, atol=1e-12)


@pytest.mark.parametrize("name", [*CELLS, "tiny", "huge"])
@pytest.mark.parametrize("n", [1, 2, 3, 50])
def test_closest_pair_matches_reference(name: str, n: int) -> None:
    cells = {**CELLS, "tiny": np.eye(3) * 2.0, "huge": np.eye(3) * 1e6}
    rng = np.random.default_rng(100 + n)
    cell, inv, pbc = _kernel_cell(cells[name])
    if name == "skewed":  # a 2 Å^3 cell: hundreds of images in range, keep it small
        n = min(n, 8)
    for _ in range(3):
        positions = rng.uniform(0, 7, size=(n, 3)) + (5e5 if name == "huge" else 0.0)
        got = np.empty(3)
        _kernels_neighbors._closest_pair(positions, cell, inv, pbc, 0.0, got)
        d, i, j = reference.closest_pair(positions, cells[name], pbc)
        if n < 2:
            assert math.isnan(got[0]) and math.isnan(d) and (got[1], got[2]) == (-1, -1)
            continue
        # at 5e5 Å a coordinate carries ~1e-10 Å of rounding: 1e-9 relative is the promise
        assert got[0] == pytest.approx(d, rel=1e-12 if name != "huge" else 1e-9)
        assert (int(got[1]), int(got[2])) == (i, j)


def test_reference_closest_pair_is_the_true_minimum_image() -> None:
    """Brute force over a wide block of images agrees with the reference's bounded search."""
    rng = np.random.default_rng(5)
    cell = CELLS["skewed"]
    lattice = np.array(list(itertools.product(range(-15, 16), repeat=3))) @ cell
    for _ in range(5):
        positions = rng.uniform(0, 5, size=(2, 3))
        brute = np.linalg.norm(positions[1] - positions[0] + lattice, axis=1).min()
        assert reference.closest_pair(positions, cell, np.ones(3, bool))[0] == pytest.approx(brute)


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("half", [True, False])
def test_pairs_within_finds_exactly_the_pairs_in_range(name: str, half: bool) -> None:
    n = 8 if name == "skewed" else 30  # the skewed cell holds 2 Å^3: many images in range
    _check_pairs_within(name, half, n, 3.1)


@pytest.mark.parametrize("name", ["cubic", "triclinic"])
@pytest.mark.parametrize("half", [True, False])
def test_pairs_within_is_exact_on_cells_finer_than_the_radius(name: str, half: bool) -> None:
    """A box under three radii across, densely filled: the grid takes cells a half or a
    third of the radius wide (searching 2 or 3 cells out), and finds the same pairs."""
    n, radius = 120, 5.5
    extent = 1.0 / np.linalg.norm(np.linalg.inv(CELLS[name]), axis=0)  # between faces
    periodic = np.ones(3, dtype=np.bool_)
    one = _kernels_neighbors._grid_shape(extent, periodic, radius, n, 1)
    finer = [_kernels_neighbors._grid_shape(extent, periodic, radius, n, k) for k in (2, 3)]
    assert min(c for _, _, c in finer) < one[2]  # so _grid picks a finer one
    _check_pairs_within(name, half, n, radius)


def _check_pairs_within(name: str, half: bool, n: int, radius: float) -> None:
    """_pairs_within's pairs, shifts and rows against a brute-force search over images."""
    rng = np.random.default_rng(7)
    cell, inv, pbc = _kernel_cell(CELLS[name])
    positions = rng.uniform(0, 7, size=(n, 3))
    centers = np.arange(0, n, 1 if half else 3)
    best = np.empty(3)
    none = np.zeros((0, 2), dtype=np.int64)
    args = (positions, cell, inv, pbc, radius, centers, half)
    rows = np.zeros(len(centers) + 1, dtype=np.int64)
    count = _kernels_neighbors._pairs_within(*args, none, np.zeros((0, 3)), best, rows[:0])
    pairs = np.zeros((count, 2), dtype=np.int64)  # counted first, then filled
    shifts = np.zeros((count, 3))
    assert _kernels_neighbors._pairs_within(*args, pairs, shifts, best, rows) == count
    for c, i in enumerate(centers):  # pairs come centre by centre
        assert (pairs[rows[c] : rows[c + 1], 0] == i).all()
    assert rows[-1] == count
    got = sorted(
        (int(i), int(j), round(float(np.linalg.norm(positions[j] - positions[i] + s)), 9))
        for (i, j), s in zip(pairs[:count], shifts[:count], strict=True)
    )
    images = reference._images(CELLS[name], pbc, radius)
    expected = []
    for i in centers:
        for j in range(n):
            if j == i or (half and j < i):
                continue
            d = reference.minimum_image((positions[j] - positions[i])[None], CELLS[name], pbc)
            r = np.linalg.norm(d + images, axis=1)
            expected += [(int(i), j, round(float(x), 9)) for x in r[r < radius]]
    assert got == sorted(expected)


def _triclinic_pairs(seed: int, centers: np.ndarray, starts: np.ndarray) -> tuple[Any, ...]:
    """40 random atoms in the triclinic cell: their pairs within 4 Å of ``centers``.

    Returns positions, pbc, pairs, shifts, the pair count and the closest pair ``best``;
    ``starts`` (empty, or one more than ``centers``) is filled with each centre's first pair.
    """
    rng = np.random.default_rng(seed)
    cell, inv, pbc = _kernel_cell(CELLS["triclinic"])
    positions = rng.uniform(0, 7, size=(40, 3))
    pairs = np.zeros((4000, 2), dtype=np.int64)
    shifts = np.zeros((4000, 3))
    best = np.empty(3)
    count = _kernels_neighbors._pairs_within(
        positions, cell, inv, pbc, 4.0, centers, False, pairs, shifts, best, starts
    )
    return positions, pbc, pairs, shifts, count, best


def test_list_kernels_match_reference() -> None:
    centers = np.arange(0, 40, 2)
    positions, pbc, pairs, shifts, count, best = _triclinic_pairs(
        8, centers, np.empty(0, np.int64)
    )
    counts = np.zeros(20)
    _kernels_neighbors._list_rdf(positions, pairs, shifts, 0, count, 4.0, counts)
    expected = reference.rdf_counts(positions, CELLS["triclinic"], pbc, centers, 4.0, 20)
    np.testing.assert_array_equal(counts, expected)
    out = np.empty(3)
    _kernels_neighbors._list_min(positions, pairs, shifts, count, out)
    assert out[0] == pytest.approx(best[0], rel=1e-12)


def test_split_at_cutoff_puts_each_centres_inside_pairs_first() -> None:
    centers = np.arange(0, 40, 3)
    starts = np.zeros(len(centers) + 1, dtype=np.int64)
    positions, pbc, pairs, shifts, count, _ = _triclinic_pairs(9, centers, starts)
    before_pairs, before_shifts = pairs[:count].copy(), shifts[:count].copy()
    cutoff = 3.0
    _kernels_neighbors._split_at_cutoff(positions, pairs, shifts, starts, cutoff)

    def lengths(p: np.ndarray, s: np.ndarray) -> np.ndarray:
        return np.linalg.norm(positions[p[:, 1]] - positions[p[:, 0]] + s, axis=1)

    r = lengths(pairs[:count], shifts[:count])
    r_before = lengths(before_pairs, before_shifts)
    for c in range(len(centers)):
        lo, hi = starts[c], starts[c + 1]
        inside = r[lo:hi] < cutoff
        assert inside.sum() == (r_before[lo:hi] < cutoff).sum() > 0
        assert inside[: inside.sum()].all()  # the inside pairs first, then the others
        # the same pairs (with their shifts), only in another order
        key = lambda p, s: sorted(zip(p[:, 1].tolist(), np.round(s, 12).tolist(), strict=True))  # noqa: E731
        assert key(pairs[lo:hi], shifts[lo:hi]) == key(before_pairs[lo:hi], before_shifts[lo:hi])
    counts = np.zeros(20)
    _kernels_neighbors._list_rdf(positions, pairs, shifts, 0, count, 4.0, counts)
    expected = reference.rdf_counts(positions, CELLS["triclinic"], pbc, centers, 4.0, 20)
    np.testing.assert_array_equal(counts, expected)


def test_kinetic_energy_matches_reference() -> None:
    rng = np.random.default_rng(7)
    v = rng.normal(size=(64, 3))
    m = rng.uniform(1, 200, size=64)
    expected = reference.kinetic_energy(v, m)
    assert _kernels._kinetic_energy(v, m) == pytest.approx(expected, rel=1e-12)


def _frame_row(values: np.ndarray, clock: float, energy: float, cols: int) -> np.ndarray:
    """A ring row holding one frame's displacements ``values``, its clock and energy."""
    U = _kernels_update
    row = np.full(cols, np.nan)
    row[U.R_CLOCK] = clock
    row[U.R_HAS_DISP] = 1.0 if values.size else 0.0
    row[U.R_HAS_V] = row[U.R_HAS_RDF] = 0.0
    _kernels._central_moments(values, row[U.R_DN : U.R_DN + 5])
    row[U.R_DMAX] = values.max(initial=0.0)
    row[U.R_DSQ] = float(np.sum(values**2))
    row[U.R_T : U.R_T + 6] = values.sum()
    row[U.R_E] = energy
    row[U.R_DMIN] = values.min(initial=np.inf) if values.size else np.nan
    return row


def test_merged_aggregates_match_numpy_over_frames() -> None:
    """Moments, co-moments, sums and extremes of frames merged in any grouping equal the
    same statistics of the pooled values (the window aggregate of _kernels_update)."""
    U = _kernels_update
    rng = np.random.default_rng(9)
    chunks = [rng.gamma(2.0, 0.05, size=k) + 10.0 for k in (1, 7, 100, 3, 0, 50, 2)]
    clocks = 2.0 * np.arange(len(chunks)) + 1e6  # far from zero: the merge is centred
    energies = -3.5 + 1e-4 * rng.normal(size=len(chunks))
    energies[2] = np.nan  # a frame without energy
    items = []
    for values, clock, energy in zip(chunks, clocks, energies, strict=True):
        item = np.zeros(U.N_AG)
        U._frame_aggregate(_frame_row(values, clock, energy, U.R_LAGS), item)
        items.append(item)
    for order in ([0, 1, 2, 3, 4, 5, 6], [6, 3, 0, 1, 2, 4, 5]):
        left, right = np.zeros(U.N_AG), np.zeros(U.N_AG)
        U._empty_aggregate(left)
        U._empty_aggregate(right)
        for k in order[:3]:
            U._merge(left, items[k], left)
        for k in order[3:]:
            U._merge(items[k], right, right)  # built from the other end
        g = np.zeros(U.N_AG)
        U._merge(left, right, g)
        x = np.concatenate(chunks)
        mean = x.mean()
        expected = [x.size, mean, *(np.sum((x - mean) ** p) for p in (2, 3, 4))]
        np.testing.assert_allclose(g[U.AG_DN : U.AG_DN + 5], expected, rtol=1e-9)
        assert g[U.AG_DMAX] == x.max() and g[U.AG_DMIN] == x.min()
        np.testing.assert_allclose(g[U.AG_DSQ], np.sum(x**2), rtol=1e-12)
        means = np.array([c.mean() for c in chunks if c.size])
        assert g[U.AG_SN] == means.size
        np.testing.assert_allclose(g[U.AG_SMEAN], means.mean(), rtol=1e-12)
        np.testing.assert_allclose(g[U.AG_SM2], np.sum((means - means.mean()) ** 2), rtol=1e-9)
        ok = ~np.isnan(energies)
        t, e = clocks[ok], energies[ok]
        assert g[U.AG_NE] == ok.sum()
        np.testing.assert_allclose(g[U.AG_ET], t.mean(), rtol=1e-15)
        np.testing.assert_allclose(g[U.AG_EE], e.mean(), rtol=1e-12)
        np.testing.assert_allclose(g[U.AG_ETT], np.sum((t - t.mean()) ** 2), rtol=1e-9)
        np.testing.assert_allclose(g[U.AG_ETE], np.sum((t - t.mean()) * (e - e.mean())), rtol=1e-9)
        np.testing.assert_allclose(g[U.AG_EEE], np.sum((e - e.mean()) ** 2), rtol=1e-9)


def test_two_stack_window_matches_numpy_through_every_flip() -> None:
    """Frames pushed and evicted through _window_push/_window_evict for 5 windows: the
    window's aggregate (front suffix merged with the back) pools exactly its frames."""
    U = _kernels_update
    W = 7
    lags = np.array([1, 2, 3, 6])
    cols = U.R_LAGS + 2 * lags.size + U.N_AG
    ring = np.full((W, cols), np.nan)
    ibuf = np.zeros(U.N_IBUF, dtype=np.int64)
    acc = np.zeros((U.N_ACC_ROWS, max(U.N_AG, lags.size)))
    rng = np.random.default_rng(4)
    frames = [rng.gamma(2.0, 0.1, size=rng.integers(1, 9)) for _ in range(5 * W + 3)]
    frames[9] = frames[9] * 1e9  # a blow-up: merges, not subtractions, so nothing lingers
    msd = rng.uniform(0.0, 1.0, size=(len(frames), lags.size))
    msd[9] = 1e12
    for t, values in enumerate(frames):
        head, count = ibuf[U.I_HEAD], ibuf[U.I_COUNT]
        if count == W:
            U._window_evict(ring, ibuf, acc, lags)
        ring[head] = np.nan
        ring[head, : U.R_LAGS] = _frame_row(values, 2.0 * t, -1.0 + t, U.R_LAGS)[: U.R_LAGS]
        n_window = min(count + 1, W)
        ring[head, U.R_LAGS : U.R_LAGS + lags.size] = np.where(
            lags <= n_window - 1, msd[t], np.nan
        )
        U._window_push(ring, ibuf, acc, lags, head, n_window)
        ibuf[U.I_HEAD] = (head + 1) % W
        ibuf[U.I_COUNT] = n_window
        oldest = (ibuf[U.I_HEAD] - n_window) % W
        g = np.zeros(U.N_AG)
        if ibuf[U.I_FRONT] > 0:
            U._merge(ring[oldest, U.R_LAGS + 2 * lags.size :], acc[U.C_BACK], g)
        else:
            g[:] = acc[U.C_BACK, : U.N_AG]
        x = np.concatenate(frames[t - n_window + 1 : t + 1])
        np.testing.assert_allclose(g[U.AG_DN], x.size)
        np.testing.assert_allclose(g[U.AG_DN + 1], x.mean(), rtol=1e-12)
        np.testing.assert_allclose(g[U.AG_DN + 2], np.sum((x - x.mean()) ** 2), rtol=1e-9)
        assert g[U.AG_DMAX] == x.max()
        for li, lag in enumerate(lags):  # each lag over the frames whose origin is inside
            if lag <= n_window - 1:
                want = msd[t - n_window + 1 + lag : t + 1, li].sum()
                got = acc[U.C_MSD, li] + acc[U.C_MSD + 1, li]
                assert got == pytest.approx(want, rel=1e-12), (t, lag)


def test_two_sum_keeps_a_running_sum_exact_after_a_huge_value_leaves() -> None:
    U = _kernels_update
    high, low = np.zeros(1), np.zeros(1)
    values = [0.1, 1e20, 0.2, 0.3]
    for v in values:
        U._two_sum_add(high, low, 0, v)
    U._two_sum_add(high, low, 0, -1e20)
    assert high[0] + low[0] == pytest.approx(0.6, rel=1e-15)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(0.0, 50.0, allow_subnormal=False), min_size=1, max_size=200),
    st.sampled_from([0.0, 0.05, 0.5, 0.95, 1.0]),
)
def test_histogram_quantile_is_within_its_bound(values: list[float], q: float) -> None:
    hist = np.zeros(HIST_SIZE, dtype=np.int64)
    for v in values:
        _kernels._hist_add(hist, _kernels._hist_bin(v), 1)
    got = _kernels._hist_quantile(hist, len(values), q)
    exact = float(np.quantile(values, q))
    assert abs(got - exact) <= HIST_REL_ERROR * exact + HIST_UNDERFLOW


def test_histogram_bins_cover_the_range_in_order() -> None:
    values = np.geomspace(1e-9, 1000.0, 2000)
    bins = [_kernels._hist_bin(v) for v in values]
    assert bins == sorted(bins)
    assert _kernels._hist_bin(0.0) == 0
    assert _kernels._hist_bin(5000.0) == _kernels.HIST_BINS - 1
    for v, b in zip(values, bins, strict=True):
        assert abs(_kernels._hist_value(b) - v) <= HIST_REL_ERROR * 2 * v + HIST_UNDERFLOW
    hist = np.zeros(HIST_SIZE, dtype=np.int64)
    _kernels._hist_add(hist, _kernels._hist_bin(5000.0), 3)
    assert _kernels._hist_quantile(hist, 3, 0.5) == np.inf


def test_sliding_dft_matches_fft_of_the_zero_padded_window() -> None:
    rng = np.random.default_rng(10)
    w = 12
    k = w // 2 + 1
    twiddle = np.exp(-2j * np.pi * np.arange(w) / w)
    X = np.zeros(k, dtype=np.complex128)
    Z = np.zeros(k, dtype=np.complex128)
    stream = rng.normal(size=40)
    present = rng.uniform(size=40) > 0.2
    window: list[tuple[float, bool]] = [(0.0, False)] * w
    for value, here in zip(stream, present, strict=True):
        old, old_here = window.pop(0)
        window.append((value, bool(here)))
        _kernels._dft_slide(X, Z, twiddle, old, old_here, value, bool(here))
        x = np.array([v if p else 0.0 for v, p in window])
        z = np.array([1.0 if p else 0.0 for _, p in window])
        np.testing.assert_allclose(X, np.fft.rfft(x), atol=1e-11)
        np.testing.assert_allclose(Z, np.fft.rfft(z), atol=1e-11)
    values = np.array([v for v, _ in window])
    flags = np.array([1.0 if p else 0.0 for _, p in window])
    X2 = np.zeros(k, dtype=np.complex128)
    Z2 = np.zeros(k, dtype=np.complex128)
    _kernels._dft_direct(values, flags, twiddle, X2, Z2)
    np.testing.assert_allclose(X2, X, atol=1e-11)
    np.testing.assert_allclose(Z2, Z, atol=1e-11)


def test_spectral_features_match_their_formulas() -> None:
    w = 16
    phase = 2 * np.pi * np.arange(w) / w
    signal = np.sin(3 * phase) + 0.1 * np.cos(5 * phase)
    X = np.fft.rfft(signal)
    Z = np.fft.rfft(np.ones(w))
    out = np.empty(3)
    _kernels._spectral(X, Z, float(signal.mean()), w, 2.0, out)
    power = np.abs(np.fft.rfft(signal - signal.mean())[1 : w // 2 + 1]) ** 2
    p = power / power.sum()
    nz = p[p > 0]
    assert out[0] == pytest.approx(3 / (w * 2.0) * 1000.0)
    assert out[1] == pytest.approx(-np.sum(nz * np.log(nz)) / np.log(w // 2), rel=1e-9)
    assert out[2] == pytest.approx(power.max() / power.sum(), rel=1e-9)
    _kernels._spectral(X * 0, Z, 0.0, w, 2.0, out)
    assert np.isnan(out).all()


def test_slope_anisotropy_peak_and_zero_crossing() -> None:
    rng = np.random.default_rng(11)
    x = rng.uniform(1e6, 1e6 + 10, size=20)  # far from 0: centring matters
    y = 3.0 * x + rng.normal(size=20)
    assert _kernels._slope(x, y, 20) == pytest.approx(reference._slope(x, y), rel=1e-9)
    assert math.isnan(_kernels._slope(x, y, 1))
    steps = rng.normal(size=(200, 3)) * [1.0, 2.0, 0.5]
    t = steps.T @ steps
    packed = np.array([t[0, 0], t[1, 1], t[2, 2], t[0, 1], t[0, 2], t[1, 2]])
    lam = np.linalg.eigvalsh(t)
    kappa = 1.5 * np.sum((lam - lam.mean()) ** 2) / lam.sum() ** 2
    assert _kernels._anisotropy(packed) == pytest.approx(kappa, rel=1e-9)
    assert math.isnan(_kernels._anisotropy(np.zeros(6)))
    g = np.array([0.0, 0.1, 2.0, 3.0, 1.0, 0.9, 1.1])
    out = np.empty(2)
    _kernels._first_peak(g, 0.1, out)
    assert tuple(out) == pytest.approx(reference._first_peak(g, 0.1))
    lags = np.array([1.0, 2.0, 4.0])
    assert _kernels._zero_crossing(lags, np.array([0.5, -0.5, -1.0]), 3) == pytest.approx(1.5)
    assert _kernels._zero_crossing(lags, np.array([-1.0, 0.5, 0.2]), 3) == pytest.approx(0.5)
    assert math.isnan(_kernels._zero_crossing(lags, np.array([0.9, 0.5, 0.2]), 3))


def test_histogram_bins_from_bits_agree_with_frexp() -> None:
    edges = [0.0, 1e-12, 2.0**-30, 1023.9, 1024.0, 1e9]
    values = np.concatenate([edges, np.geomspace(1e-9, 1e3, 500)])
    out = np.empty(values.size, dtype=np.int32)
    _kernels._hist_bins(values, values.view(np.int64), out)
    assert out.tolist() == [_kernels._hist_bin(v) for v in values]
