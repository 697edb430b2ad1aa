"""Every detector kernel against a plain NumPy/Python reference (also run with
NUMBA_DISABLE_JIT=1 by tests/test_nojit.py)."""

from __future__ import annotations

import bisect
import math

import numpy as np
import pytest
from scipy import stats

from trajwatch.detectors import _kernels as kern


def _welford(xs: np.ndarray) -> np.ndarray:
    st = np.zeros((4, xs.shape[1]))
    for x in xs:
        kern._welford_learn(x, st)
    return st


def test_welford_matches_mean_and_variance_skipping_nan() -> None:
    rng = np.random.default_rng(0)
    xs = rng.normal(3.0, 2.0, size=(200, 5))
    xs[rng.random(xs.shape) < 0.1] = np.nan
    st = _welford(xs)
    np.testing.assert_allclose(st[0], np.isfinite(xs).sum(axis=0))
    np.testing.assert_allclose(st[1], np.nanmean(xs, axis=0), rtol=1e-12)
    np.testing.assert_allclose(st[2] / (st[0] - 1), np.nanvar(xs, axis=0, ddof=1), rtol=1e-10)
    # streak: finite values since the last NaN
    for k in range(5):
        bad = np.flatnonzero(np.isnan(xs[:, k]))
        expected = len(xs) - 1 - bad[-1] if bad.size else len(xs)
        assert st[3, k] == expected


def test_welford_z_and_standardise_match_reference() -> None:
    rng = np.random.default_rng(1)
    xs = rng.normal(size=(100, 4))
    st = _welford(xs)
    x = np.array([0.5, np.nan, np.inf, 3.0])
    z = np.empty(4)
    best = kern._welford_z(x, st, 1e-4, 1e-12, 20.0, np.zeros((x.size, 3)), z)
    sd = xs.std(axis=0, ddof=1)
    mean = xs.mean(axis=0)
    assert z[0] == pytest.approx((0.5 - mean[0]) / sd[0], rel=1e-12)
    assert z[1] == math.inf  # finite for 100 frames, now NaN
    assert z[2] == math.inf
    assert best == math.inf
    st[3, 1] = 5.0  # a short streak: NaN is just "unavailable"
    kern._welford_z(x, st, 1e-4, 1e-12, 20.0, np.zeros((x.size, 3)), z)
    assert math.isnan(z[1])
    out = np.empty(4)
    kern._standardise(x, st, 1e-4, 1e-12, out)
    assert out[1] == 0.0 and out[2] == 0.0
    assert out[3] == pytest.approx((3.0 - mean[3]) / sd[3], rel=1e-12)


def test_std_floor_keeps_constant_features_finite() -> None:
    st = _welford(np.full((10, 1), 2.0))
    z = np.empty(1)
    assert kern._welford_z(np.array([2.0]), st, 1e-4, 1e-12, 20.0, np.zeros((1, 3)), z) == 0.0
    assert z[0] == 0.0
    assert kern._welford_z(
        np.array([2.1]), st, 1e-4, 1e-12, 20.0, np.zeros((1, 3)), z
    ) == pytest.approx(0.1 / 2e-4)


@pytest.mark.parametrize("n", [1, 2, 7, 40])
def test_mad_sorted_matches_numpy(n: int) -> None:
    rng = np.random.default_rng(n)
    a = np.sort(rng.normal(size=n))
    center = float(np.median(a))
    mad, mean_abs = kern._mad_sorted(a, n, center)
    assert mad == pytest.approx(np.median(np.abs(a - center)), abs=1e-12)
    assert mean_abs == pytest.approx(np.mean(np.abs(a - center)), abs=1e-12)


def test_robust_window_matches_numpy_median_and_mad() -> None:
    rng = np.random.default_rng(2)
    d, w = 3, 11
    ring = np.zeros((d, w))
    srt = np.zeros((d, w))
    meta = np.zeros((d + 1, 3))
    center = np.zeros(d)
    spread = np.zeros(d)
    xs = rng.normal(size=(60, d))
    xs[5, 1] = np.nan
    history: list[list[float]] = [[] for _ in range(d)]
    for x in xs:
        kern._robust_learn(x, ring, srt, meta, center, spread, d, np.zeros((d, 3)))
        for k in range(d):
            if np.isfinite(x[k]):
                history[k].append(x[k])
    for k in range(d):
        window = np.array(history[k][-w:])
        np.testing.assert_allclose(srt[k, : len(window)], np.sort(window))
        assert center[k] == pytest.approx(np.median(window))
        assert spread[k] == pytest.approx(1.4826 * np.median(np.abs(window - np.median(window))))
    z = np.empty(d)
    x = np.array([center[0] + 2 * spread[0], center[1], np.nan])
    quantum = np.zeros((d, 3))  # no resolution floor
    best = kern._robust_z(x, meta, center, spread, quantum, 1e-4, 1e-12, 20.0, z)
    assert z[0] == pytest.approx(2.0) and z[1] == 0.0 and z[2] == math.inf
    assert best == math.inf


def test_quantum_is_the_smallest_non_zero_change() -> None:
    quantum = np.zeros((2, 3))
    for x in ([1.0, 5.0], [1.0, 5.0], [1.5, np.nan], [1.25, 5.0], [1.25, 5.0]):
        kern._quantum_learn(np.array(x), quantum)
    assert quantum[0, 1] == 0.25 and quantum[1, 1] == 0.0


def test_quantum_ignores_round_off() -> None:
    """240 and 239.99999999999994 are the same spectral bin computed two ways."""
    quantum = np.zeros((1, 3))
    for x in (240.0, 239.99999999999994, 240.0, 120.0):
        kern._quantum_learn(np.array([x]), quantum)
    assert quantum[0, 1] == 120.0


def _hst_reference_score(z, feature, split, mass, ref, size_limit):  # type: ignore[no-untyped-def]
    trees, internal = feature.shape
    total = 0.0
    for t in range(trees):
        node, depth = 0, 0
        while node < internal and mass[ref, t, node] >= size_limit:
            node = 2 * node + 1 if z[feature[t, node]] < split[t, node] else 2 * node + 2
            depth += 1
        total += mass[ref, t, node] * 2**depth
    return total / trees


def test_hst_learn_counts_paths_and_swaps_windows() -> None:
    rng = np.random.default_rng(3)
    trees, height, d, window = 3, 3, 4, 20
    internal = 2**height - 1
    feature = rng.integers(d, size=(trees, internal)).astype(np.int64)
    split = rng.normal(size=(trees, internal))
    mass = np.zeros((2, trees, 2 ** (height + 1) - 1))
    state = np.array([0, 0, window, 0], dtype=np.int64)
    xs = rng.normal(size=(window, d))
    expected = np.zeros((trees, mass.shape[2]))
    for x in xs:
        for t in range(trees):
            node = 0
            expected[t, 0] += 1
            while node < internal:
                node = 2 * node + 1 if x[feature[t, node]] < split[t, node] else 2 * node + 2
                expected[t, node] += 1
        kern._hst_learn(x, feature, split, mass, state)
    # the window just closed: its masses are now the reference, the latest is empty
    assert state.tolist() == [1, 0, window, 1]
    np.testing.assert_array_equal(mass[0], expected)
    assert not mass[1].any()
    # every level of every tree holds the whole window
    for level in range(height + 1):
        nodes = range(2**level - 1, 2 ** (level + 1) - 1)
        np.testing.assert_array_equal(mass[0][:, list(nodes)].sum(axis=1), window)
    for x in rng.normal(size=(5, d)):
        got = kern._hst_score(x, feature, split, mass, state, 2.0)
        assert got == pytest.approx(_hst_reference_score(x, feature, split, mass, 0, 2.0))


def test_loda_projection_binning_and_score_match_reference() -> None:
    rng = np.random.default_rng(4)
    p, d, bins, window, half = 5, 6, 8, 30, 3.0
    index = np.stack([np.sort(rng.choice(d, 3, replace=False)) for _ in range(p)]).astype(np.int64)
    weight = rng.normal(size=(p, 3))
    counts = np.zeros((2, p, bins + 2))
    scale = np.zeros((2, p, 2))
    scale[:, :, 1] = 1.0
    pstats = np.zeros((p, 3))
    state = np.array([0, 0, window, 0], dtype=np.int64)
    xs = rng.normal(size=(window, d))
    projs = np.array([[weight[j] @ x[index[j]] for j in range(p)] for x in xs])
    out = np.empty(p)
    for x, expected in zip(xs, projs, strict=True):
        kern._loda_project(x, index, weight, out)
        np.testing.assert_allclose(out, expected)
        kern._loda_learn(out, counts, scale, pstats, state, half)
    assert state.tolist() == [1, 0, window, 1]
    edges = np.linspace(-half, half, bins + 1)
    for j in range(p):
        inside = np.histogram(projs[:, j], edges)[0]
        np.testing.assert_array_equal(counts[0, j, 1:-1], inside)
        assert counts[0, j, 0] == (projs[:, j] < -half).sum()
        assert counts[0, j, -1] == (projs[:, j] >= half).sum()
        np.testing.assert_allclose(scale[1, j], [projs[:, j].mean(), projs[:, j].std(ddof=1)])
    probe = rng.normal(size=p)
    width = 2 * half / bins
    expected_score = 0.0
    for j in range(p):
        b = int(np.searchsorted(edges, probe[j], side="right"))  # 0 below, bins+1 above
        b = min(b, bins + 1)
        density = (counts[0, j, b] + 0.5) / (window + 0.5 * (bins + 2))
        if 1 <= b <= bins:
            density /= width
        expected_score -= math.log(density)
    got = kern._loda_score(probe, counts, scale, state, half, 0.5)
    assert got == pytest.approx(expected_score / p)


def test_calibrator_surprise_is_conformal_below_the_tail_and_exponential_above() -> None:
    rng = np.random.default_rng(5)
    size = 200
    ring = np.zeros((2, size))
    state = np.array([0, 0, 0, 16], dtype=np.int64)
    tail = np.array([np.inf, 1.0, 0.05, 0.0])
    scores = np.round(rng.exponential(size=500), 2)  # with ties
    for s in scores:
        kern._calib_add(s, ring, state, tail)
    kern._calib_refit(ring, state, tail)
    cal = scores[-size:]
    np.testing.assert_array_equal(ring[1], np.sort(cal))
    np.testing.assert_array_equal(np.roll(ring[0], -int(state[1])), cal)
    k = max(10, int(0.05 * size))
    top = np.sort(cal)[-k:]
    u = top[0]
    beta = max(
        (top - u).mean() * (1 + 2 / math.sqrt(k)),
        (u - np.sort(cal)[size // 2]) / math.log(size / (2 * k)),
    )
    assert tail[0] == u and tail[1] == pytest.approx(beta)
    for s in (0.1, 1.0, u):
        expected = -math.log10((1 + (cal >= s).sum()) / (size + 1))
        assert kern._calib_surprise(s, ring, state, tail) == pytest.approx(expected)
    s = u + 3.0
    expected = -math.log10((k + 1) / (size + 1)) + 3.0 / (beta * math.log(10))
    assert kern._calib_surprise(s, ring, state, tail) == pytest.approx(expected)
    assert kern._calib_surprise(math.inf, ring, state, tail) == math.inf
    assert kern._calib_quantile(ring, state, 0.9) == np.sort(cal)[math.ceil(0.9 * size) - 1]


def test_sorted_replace_and_insert_keep_the_prefix_sorted() -> None:
    rng = np.random.default_rng(11)
    a = np.zeros(30)
    values: list[float] = []
    for v in rng.integers(0, 10, size=30).astype(float):
        kern._sorted_insert(a, len(values), v)
        values.append(v)
    for _ in range(300):
        old = values[int(rng.integers(len(values)))]
        new = float(rng.integers(0, 10))
        kern._sorted_replace(a, len(values), old, new)
        values.remove(old)
        values.append(new)
        np.testing.assert_array_equal(a, np.sort(values))


@pytest.mark.parametrize("window", [7, 64, 256])
def test_tail_window_keeps_its_largest_values_and_reads_the_quantile(window: int) -> None:
    """The tail scale's list of the largest recent |z| against a plain sorted window."""
    from trajwatch.detectors.tailscale import _top_size

    rng = np.random.default_rng(window)
    d, q, reference, min_n = 3, 0.99, 2.576, 5
    t = _top_size(window, q)
    ring, top, meta = np.zeros((d, window)), np.zeros((d, t)), np.zeros((d, 2))
    history: list[list[float]] = [[] for _ in range(d)]
    zs = np.round(rng.standard_t(3, size=(3 * window + 50, d)), 1)  # many ties
    zs[rng.random(zs.shape) < 0.05] = np.nan
    for z in zs:
        kern._tail_learn(z, ring, top, meta)
        expected_best = 0.0
        for k in range(d):
            if np.isfinite(z[k]):
                history[k].append(abs(z[k]))
            recent = np.sort(history[k][-window:])
            n = recent.size
            assert meta[k, 0] == n
            m = min(n, t)
            np.testing.assert_array_equal(top[k, :m], recent[::-1][:m])
        probe = rng.normal(scale=4.0, size=d)
        for k in range(d):
            recent = np.sort(history[k][-window:])
            a = abs(probe[k])
            if recent.size >= min_n:
                tau = recent[min(recent.size - 1, max(0, math.ceil(q * recent.size) - 1))]
                a = a * reference / tau if tau > reference else a
            expected_best = max(expected_best, a)
        assert kern._tail_scaled_max(probe, top, meta, q, reference, min_n) == expected_best


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 64, 257, kern.COUNT_SEARCH_MAX, 1030])
def test_bisect_left_matches_the_bisect_module(n: int) -> None:
    """Counted (short arrays) or halved (long ones), single or paired: bisect_left."""
    rng = np.random.default_rng(n)
    a = np.sort(rng.integers(0, 5, size=n).astype(float))
    padded = np.concatenate([a, [-99.0, 99.0]])  # values past n must not be read as data
    keys = [-1.0, 0.0, 0.5, 1.0, 2.0, 4.0, 5.0, math.nan]
    for value in keys:
        expected = bisect.bisect_left(a.tolist(), value) if value == value else 0
        assert kern._bisect_left(padded, n, value) == expected
        for other in keys:
            assert kern._bisect_left_pair(padded, n, value, other) == (
                expected,
                kern._bisect_left(padded, n, other),
            )


def _hysteresis_reference(
    scores: list[float], threshold: float, release: float, frames: int
) -> list[int]:
    out, active, quiet = [], False, 0
    for s in scores:
        if not active:
            active = s > threshold
            quiet = 0
            out.append(1 if active else 0)
            continue
        quiet = quiet + 1 if s <= release else 0
        active = quiet < frames
        out.append(0 if active else 2)
    return out


def test_hysteresis_kernel_matches_reference() -> None:
    scores = [0.0, 9.0, 12.0, 1.0, 5.0, 1.0, 1.0, 1.0, 9.0, math.inf, 0.0, 0.0, 0.0, 8.0]
    state = np.zeros(3)
    got = [kern._hysteresis(state, 8.0, 2.0, 3, s) for s in scores]
    assert got == _hysteresis_reference(scores, 8.0, 2.0, 3)
    assert state[1] == math.inf  # the peak of the last alarm


def test_cusum_kernel_matches_reference() -> None:
    rng = np.random.default_rng(13)
    surprises = np.concatenate([rng.exponential(0.43, 200), np.linspace(1, 8, 30), [np.inf]])
    state = np.array([0.0, 0.0, 1.0 / math.log(10.0)])
    total, start, mean = 0.0, 0, 1.0 / math.log(10.0)
    for i, s in enumerate(surprises):
        kern._cusum(state, i, s, 1.0, 50.0)
        capped = min(s, 50.0)
        mean += 0.01 * (min(capped, 5.0) - mean)
        total += capped - max(1.0, mean + 0.5)
        if total <= 0.0:
            total, start = 0.0, i + 1
        assert (state[0], state[1], state[2]) == pytest.approx((total, start, mean), rel=1e-12)


def test_kth_largest_is_numpy_partition() -> None:
    rng = np.random.default_rng(14)
    for n in range(1, 6):
        values = rng.exponential(size=n)
        values[rng.random(n) < 0.3] = np.inf
        for k in range(1, n + 1):
            expected = np.partition(values, n - k)[n - k]
            assert kern._kth_largest(values, k, np.empty(n)) == expected


def test_fused_hst_and_loda_kernels_equal_their_parts() -> None:
    rng = np.random.default_rng(12)
    d, trees, internal = 5, 2, 7
    x = rng.normal(size=d)
    stats = _welford(rng.normal(size=(50, d)))
    z = np.empty(d)
    kern._standardise(x, stats, 1e-4, 1e-12, z)
    feature = rng.integers(d, size=(trees, internal)).astype(np.int64)
    split = rng.normal(size=(trees, internal))
    mass = rng.integers(0, 20, size=(2, trees, 15)).astype(float)
    state = np.array([0, 3, 50, 2], dtype=np.int64)
    scratch = np.empty(d)
    got = kern._hst_score_x(x, stats, scratch, feature, split, mass, state, 2.0)
    assert got == kern._hst_score(z, feature, split, mass, state, 2.0)
    index = np.array([[0, 2], [1, 4]], dtype=np.int64)
    weight = rng.normal(size=(2, 2))
    counts = rng.integers(0, 9, size=(2, 2, 6)).astype(float)
    scale = np.array([[[0.0, 1.0]] * 2] * 2)
    proj = np.empty(2)
    got = kern._loda_score_x(
        x, stats, scratch, index, weight, proj, counts, scale, state, 3.0, 0.5
    )
    kern._loda_project(z, index, weight, proj)
    assert got == kern._loda_score(proj, counts, scale, state, 3.0, 0.5)


def _cauchy_reference(surprise: np.ndarray, weight: np.ndarray) -> float:
    p = np.minimum(10.0**-surprise, 0.9)
    t = float((weight * np.tan((0.5 - p) * np.pi)).sum() / weight.sum())
    return -math.log10(float(stats.cauchy.sf(t)))


@pytest.mark.parametrize(
    "surprise", [[0.0, 0.0, 0.0], [1.0, 2.0, 0.5], [6.0, 0.2, 0.1], [12.0, 11.0, 0.0]]
)
def test_cauchy_combination_matches_scipy(surprise: list[float]) -> None:
    s = np.array(surprise)
    w = np.array([1.0, 2.0, 1.0])
    assert kern._cauchy_surprise(s, w) == pytest.approx(_cauchy_reference(s, w), rel=1e-6)


def test_cauchy_combination_far_tail_is_the_weighted_harmonic_mean() -> None:
    s = np.array([400.0, 398.0, 0.0])
    w = np.ones(3)
    expected = math.log10((10**0 + 10**-2) / 3) + 400.0
    assert kern._cauchy_surprise(s, w) == pytest.approx(expected)
    assert kern._cauchy_surprise(np.array([np.inf, 0.0]), np.ones(2)) == math.inf


def _page_hinkley_reference(
    xs: np.ndarray, delta: float, threshold: float, min_n: int
) -> list[int]:
    fired = []
    n = mean = up = down = up_min = down_max = 0.0
    for t, v in enumerate(xs):
        n += 1
        mean += (v - mean) / n
        up += v - mean - delta
        down += v - mean + delta
        up_min = min(up_min, up)
        down_max = max(down_max, down)
        if n >= min_n and max(up - up_min, down_max - down) > threshold:
            fired.append(t)
            n = mean = up = down = up_min = down_max = 0.0
    return fired


def test_page_hinkley_matches_reference() -> None:
    rng = np.random.default_rng(6)
    xs = np.concatenate(
        [rng.normal(size=150), rng.normal(2.0, 1.0, size=100), rng.normal(size=100)]
    )
    state = np.zeros((1, 6))
    stat = np.zeros(1)
    got = [
        t
        for t, v in enumerate(xs)
        if kern._page_hinkley(np.array([v]), state, 0.5, 25.0, 8.0, stat)
    ]
    assert got == _page_hinkley_reference(xs, 0.5, 25.0, 8)
    assert got and 150 <= got[0] < 170


def _adwin_reference(window: list[float], delta: float, min_window: int) -> int:
    n = len(window)
    a = np.array(window)
    var = a.var()
    log_term = math.log(2.0 * math.log(n) / delta)
    best, best_i = 0.0, 0
    for n0 in range(min_window, n - min_window + 1):
        n1 = n - n0
        m = 1.0 / (1.0 / n0 + 1.0 / n1)
        eps = math.sqrt(2 * var * log_term / m) + 2 * log_term / (3 * m)
        gap = abs(a[n0:].mean() - a[:n0].mean()) - eps
        if gap > best:
            best, best_i = gap, n0
    return best_i


def test_adwin_matches_brute_force_split_search() -> None:
    rng = np.random.default_rng(7)
    w, min_window, delta = 40, 4, 1e-3
    xs = np.concatenate([rng.normal(size=60), rng.normal(4.0, 1.0, size=30)])
    ring = np.zeros((1, w))
    meta = np.zeros((1, 2))
    shift = np.zeros(1)
    window: list[float] = []
    cuts = 0
    for v in xs:
        window = ([*window, v])[-w:]
        cut = kern._adwin(np.array([v]), ring, meta, delta, min_window, True, shift)
        expected = (
            _adwin_reference(window, delta, min_window) if len(window) >= 2 * min_window else 0
        )
        assert bool(cut) == bool(expected)
        if cut:
            cuts += 1
            window = window[expected:]
            assert int(meta[0, 0]) == len(window)
    assert cuts >= 1


def test_stack_frame_kernel_equals_the_general_path() -> None:
    """The fused stack kernel against the stack's general path (detector by detector,
    kernel by kernel), on a short stream with an alarm, its end and a NaN feature."""
    from trajwatch.detectors.stack import DetectorStack, StackConfig

    config = StackConfig(
        warmup_frames=20, min_calibration=10, settle_calibration=20, calibration=64,
        drift_block=5, release_frames=4,
    )  # fmt: skip
    xs = np.random.default_rng(15).normal(1.0, 0.1, size=(160, 4))
    xs[100:104] += 3.0
    xs[130, 2] = np.nan
    fused, general = DetectorStack(config), DetectorStack(config)
    general.fused = False
    got = [(fused.advance(x), fused.last_surprise, fused.last_onset) for x in xs]
    expected = [(general.advance(x), general.last_surprise, general.last_onset) for x in xs]
    assert fused._fused is not None and general._fused is None
    assert got == expected
    assert [c for c, _, _ in got if c] == ["start", "end", "start", "end"]


def test_loda_learn_after_score_equals_learning_from_scratch() -> None:
    from trajwatch.detectors.loda import LODA

    rng = np.random.default_rng(5)
    xs = rng.normal(size=(700, 12))
    plain, scored = LODA(window=64), LODA(window=64)
    for x in xs:  # several window swaps, the first before any score is possible
        plain.score_one(x)
        plain.learn_one(x)
        scored.score_one(x)
        scored._learn_scored(x)
    for name in ("stats", "counts", "scale", "pstats", "state"):
        np.testing.assert_array_equal(getattr(scored, name), getattr(plain, name), name)
    probe = rng.normal(size=12) * 3
    assert scored.score_one(probe) == plain.score_one(probe)
