"""The incremental engine against the plain NumPy batch reference, frame by frame.

Random data and real ASE MD, with and without periodic cells, atoms crossing the
boundary, missing and broken data. Also run with NUMBA_DISABLE_JIT=1 (tests/test_nojit.py),
so the data here stays small; the 108-atom checks run only when the kernels are compiled.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import pytest
from numpy.typing import NDArray

from trajwatch.features import _kernels_update, reference
from trajwatch.features._kernels import HIST_REL_ERROR, HIST_UNDERFLOW
from trajwatch.features.catalogue import FEATURE_NAMES, FEATURES, WINDOW_FEATURES, lag_set
from trajwatch.features.engine import FeatureEngine, warmup
from trajwatch.frame import Frame
from trajwatch.simulate import MDSpec, run_md

JIT = os.environ.get("NUMBA_DISABLE_JIT", "0") != "1"
QUANTILES = ("disp_median", "disp_p95")
TRICLINIC = np.array([[7.0, 0.0, 0.0], [2.1, 6.5, 0.0], [-1.3, 1.7, 8.2]])


def assert_matches(
    names: Sequence[str], x: NDArray[np.float64], expected: dict[str, float], where: str = ""
) -> None:
    """Every feature equal to the reference: 1e-9 relative, quantiles within their bound."""
    assert len(x) == len(names)
    for name, got in zip(names, x, strict=True):
        want = expected[name]
        if math.isnan(want) or math.isnan(got):
            assert math.isnan(want) and math.isnan(got), f"{where} {name}: {got} vs {want}"
        elif name in QUANTILES:
            assert abs(got - want) <= HIST_REL_ERROR * abs(want) + HIST_UNDERFLOW, (where, name)
        else:
            assert got == pytest.approx(want, rel=1e-9, abs=1e-12), f"{where} {name}"


def random_stream(
    n: int,
    frames: int,
    cell: NDArray[np.float64] | None,
    velocities: str,
    seed: int = 0,
    scale: float = 0.15,
) -> list[Frame]:
    """A random walk; periodic positions are wrapped into the cell, so atoms cross it."""
    rng = np.random.default_rng(seed)
    positions = rng.uniform(0, 7, size=(n, 3))
    out = []
    for t in range(frames):
        positions = positions + rng.normal(scale=scale, size=(n, 3))
        shown = positions if cell is None else (positions @ np.linalg.inv(cell) % 1.0) @ cell
        out.append(
            Frame(
                shown,
                [29] * (n - 1) + [8],
                velocities=rng.normal(scale=0.01, size=(n, 3)) if velocities == "frame" else None,
                forces=rng.normal(size=(n, 3)),
                energy=-3.5 * n + rng.normal(),
                cell=cell,
                step=10 * t,
                time=None if velocities == "none" else 2.0 * t + 0.1 * rng.uniform(),
            )
        )
    return out


def run_and_compare(
    frames: Sequence[Frame], every: int = 1, **options: int | float
) -> FeatureEngine:
    engine = FeatureEngine(**options)  # type: ignore[arg-type]
    keys = ("window", "sample_atoms", "rdf_stride", "rdf_cutoff", "rdf_bins")
    ref_options = {k: v for k, v in options.items() if k in keys}
    for t, frame in enumerate(frames):
        x = engine.update(frame)
        if t % every == 0 or t == len(frames) - 1:
            expected = reference.features(frames[: t + 1], **ref_options)  # type: ignore[arg-type]
            assert_matches(engine.names, x, expected, where=f"frame {t}")
    return engine


SMALL = {"window": 6, "sample_atoms": 4, "rdf_stride": 2, "rdf_cutoff": 4.0, "rdf_bins": 20}


@pytest.mark.parametrize("cell", ["open", "cubic", "triclinic"])
@pytest.mark.parametrize("velocities", ["frame", "fd", "none"])
def test_matches_reference_on_random_data(cell: str, velocities: str) -> None:
    cells = {"open": None, "cubic": np.eye(3) * 7.0, "triclinic": TRICLINIC}
    frames = random_stream(9, 16, cells[cell], velocities)
    run_and_compare(frames, **SMALL)


def test_matches_reference_after_a_blow_up_has_left_the_window() -> None:
    """One frame jumps by 520 Å with an energy of 1e9 eV, then the run goes on: while it
    is in the window and after it has left (three windows later), every feature matches
    the batch reference: the window statistics never subtract a value from a sum."""
    frames = random_stream(9, 40, None, "frame", seed=5)
    blown = frames[8]
    blown.positions = blown.positions + 300.0
    blown.energy = 1e9
    for later in frames[9:]:
        later.positions = later.positions + 300.0  # it stays where it went
    run_and_compare(frames, **SMALL)


def test_matches_reference_with_a_changing_cell() -> None:
    frames = random_stream(8, 12, TRICLINIC, "frame", seed=3)
    for t, f in enumerate(frames):  # NPT-like: the cell breathes, so every list is rebuilt
        f.cell = TRICLINIC * (1.0 + 0.01 * math.sin(t))
    run_and_compare(frames, **SMALL)


@pytest.fixture(scope="module")
def small_md() -> list[Frame]:
    """24 frames of 32 Cu atoms under EMT (real forces, energies and velocities)."""
    return list(run_md(MDSpec(steps=24, repeat=2, seed=4, equilibrate_steps=20)))


def test_matches_reference_on_md_with_atoms_crossing_the_boundary(small_md: list[Frame]) -> None:
    cell = small_md[0].cell
    assert cell is not None
    inv = np.linalg.inv(cell)
    wrapped = [
        Frame(
            (f.positions @ inv % 1.0) @ cell,
            f.numbers,
            velocities=f.velocities,
            forces=f.forces,
            energy=f.energy,
            cell=cell,
            step=f.step,
            time=f.time,
        )
        for f in small_md
    ]
    crossing = np.abs(np.diff(np.array([f.positions for f in wrapped]), axis=0)).max()
    assert crossing > 2.0  # somebody jumped across the cell in the wrapped coordinates...
    options = dict(SMALL, window=8, sample_atoms=16, rdf_cutoff=5.0, rdf_bins=50)
    run_and_compare(wrapped, every=3, **options)
    # ... but the engine follows the real path: the same features as from unwrapped input.
    a = FeatureEngine(**options)  # type: ignore[arg-type]
    b = FeatureEngine(**options)  # type: ignore[arg-type]
    for f, g in zip(small_md, wrapped, strict=True):
        assert_matches(a.names, a.update(g), dict(zip(b.names, b.update(f), strict=True)))


def test_matches_reference_on_md_without_a_cell(small_md: list[Frame]) -> None:
    open_frames = [
        Frame(
            f.positions,
            f.numbers,
            velocities=f.velocities,
            forces=f.forces,
            energy=f.energy,
            step=f.step,
            time=f.time,
        )
        for f in small_md
    ]
    engine = run_and_compare(open_frames, every=3, **dict(SMALL, window=8, sample_atoms=16))
    x = engine.update(open_frames[-1])
    assert math.isnan(x[engine.names.index("rdf_first_peak_pos")])  # g(r) needs a volume
    assert x[engine.names.index("min_interatomic_dist")] > 2.0


@pytest.mark.skipif(not JIT, reason="108 atoms x 300 frames: compiled kernels only")
def test_matches_reference_on_the_clean_fixture_with_default_settings(
    clean_frames: list[Frame],
) -> None:
    engine = FeatureEngine()
    for t, frame in enumerate(clean_frames):
        x = engine.update(frame)
        if t in (1, 50, len(clean_frames) - 1):  # filling, just full, long after
            assert_matches(engine.names, x, reference.features(clean_frames[: t + 1]), f"{t}")
    contact_builds, rdf_builds = engine.neighbor_list_builds
    rdf_frames = len(clean_frames) // engine.rdf_stride
    assert contact_builds <= 10 and rdf_builds < rdf_frames / 2  # only when atoms moved enough


@pytest.mark.skipif(not JIT, reason="500+ frames: compiled kernels only")
def test_a_long_lived_rdf_list_is_split_at_the_cutoff_without_changing_g_of_r() -> None:
    age = _kernels_update.RDF_SPLIT_AGE
    frames = random_stream(12, age + 30, np.eye(3) * 7.0, "frame", scale=0.002)
    engine = FeatureEngine(**SMALL)  # type: ignore[arg-type]
    checks = {1, age - 1, age, age + 1, len(frames) - 1}
    for t, frame in enumerate(frames):
        x = engine.update(frame)
        if t in checks:
            assert_matches(engine.names, x, reference.features(frames[: t + 1], **SMALL), f"{t}")  # type: ignore[arg-type]
    assert engine.neighbor_list_builds[1] == 1  # one list all along: split at frame `age`
    # each centre's pairs inside the cutoff come first (on the unwrapped positions kept)
    state = _kernels_update._carve(engine._fstate, engine._istate, engine._i32state)
    ibuf, atoms = state[0], state[3]
    u = atoms[_kernels_update.A_U + ibuf[_kernels_update.I_UCUR]]
    starts, pairs, shifts = engine._rstart, engine._rpairs, engine._rshift
    for m in range(len(starts) - 1):
        lo, hi = starts[m], starts[m + 1]
        r = np.linalg.norm(u[pairs[lo:hi, 1]] - u[pairs[lo:hi, 0]] + shifts[lo:hi], axis=1)
        inside = r < SMALL["rdf_cutoff"]
        assert inside[: inside.sum()].all(), m


def _walk(start: NDArray[np.float64], scales: Sequence[float], seed: int = 0) -> list[Frame]:
    """A random walk in the 7 Å cubic cell from ``start``: one frame per step size."""
    rng = np.random.default_rng(seed)
    cell = np.eye(3) * 7.0
    positions, frames = start.copy(), []
    for t, scale in enumerate(scales):
        positions = positions + rng.normal(scale=scale, size=positions.shape)
        frames.append(Frame(positions % 7.0, [29] * len(positions), energy=-40.0 + rng.normal(),
                            cell=cell, time=2.0 * t))  # fmt: skip
    return frames


@pytest.mark.skipif(not JIT, reason="8,000 frames: compiled kernels only")
def test_list_skins_widen_while_atoms_move_fast_and_narrow_once_they_calm() -> None:
    k = _kernels_update
    hot = [0.15] * 150
    calm = [0.002] * (4 * k.SKIN_SHRINK_AGE + 100)  # four narrowings: 2.0 Å to 0.5
    frames = _walk(np.random.default_rng(1).uniform(0, 7, size=(12, 3)), hot + calm)
    engine = FeatureEngine(**SMALL)  # type: ignore[arg-type]
    least = engine.skin
    for t, frame in enumerate(frames):
        x = engine.update(frame)
        fbuf = engine._fbuf  # (allocated at the first frame)
        if t in (len(hot) - 1, len(frames) - 1):  # the same features, whatever the skins
            expected = reference.features(frames[: t + 1], **SMALL)  # type: ignore[arg-type]
            assert_matches(engine.names, x, expected, f"{t}")
        if t == len(hot) - 1:
            assert fbuf[k.F_CONTACT_SKIN] > least and fbuf[k.F_RDF_SKIN] > 2 * least
            builds = engine.neighbor_list_builds
        if t == len(hot) + 2 * k.SKIN_SHRINK_AGE:  # narrowed: one rebuild per SKIN_SHRINK_AGE
            assert fbuf[k.F_CONTACT_SKIN] < k.SKIN_MAX * least
    assert (fbuf[k.F_CONTACT_SKIN], fbuf[k.F_RDF_SKIN]) == (least, 2 * least)
    assert engine.neighbor_list_builds[0] - builds[0] <= 6  # no churn while calm


def test_list_skins_stay_put_when_the_cell_changes_every_frame() -> None:
    """A changing cell (NPT) rebuilds the lists every frame whatever the skin: no widening."""
    rng = np.random.default_rng(3)
    positions, frames = rng.uniform(0, 7, size=(8, 3)), []
    for t in range(40):
        positions = positions + rng.normal(scale=0.15, size=positions.shape)
        cell = np.eye(3) * 7.0 * (1.0 + 1e-3 * t)
        frames.append(Frame((positions @ np.linalg.inv(cell) % 1.0) @ cell, [29] * 8,
                            energy=-30.0, cell=cell, time=2.0 * t))  # fmt: skip
    engine = run_and_compare(frames, **SMALL)
    k = _kernels_update
    assert (engine._fbuf[k.F_CONTACT_SKIN], engine._fbuf[k.F_RDF_SKIN]) == (0.5, 1.0)
    assert engine.neighbor_list_builds[0] >= len(frames) - 1


def test_species_change_is_reported_and_resets_the_window() -> None:
    frames = random_stream(6, 10, np.eye(3) * 7.0, "frame", seed=5)
    engine = FeatureEngine(**SMALL)  # type: ignore[arg-type]
    for f in frames[:6]:
        engine.update(f)
        assert engine.structure_change is None
    swapped = frames[6]
    numbers = swapped.numbers.copy()
    numbers[2] = 47
    changed = Frame(
        swapped.positions,
        numbers,
        velocities=swapped.velocities,
        energy=swapped.energy,
        cell=swapped.cell,
        step=swapped.step,
        time=swapped.time,
    )
    x = engine.update(changed)
    assert engine.structure_change == "species changed for 1 atom(s), first atom 2: Cu -> Ag"
    fresh = FeatureEngine(**SMALL).update(changed)  # type: ignore[arg-type]
    np.testing.assert_array_equal(np.isnan(x), np.isnan(fresh))
    np.testing.assert_allclose(x[~np.isnan(x)], fresh[~np.isnan(fresh)], rtol=1e-12)
    engine.update(changed)
    assert engine.structure_change is None


def test_atom_count_change_is_reported_and_resets_the_window() -> None:
    frames = random_stream(6, 8, None, "fd", seed=6)
    engine = FeatureEngine(**SMALL)  # type: ignore[arg-type]
    for f in frames[:5]:
        engine.update(f)
    fewer = Frame(frames[5].positions[:4], frames[5].numbers[:4], energy=-1.0, time=frames[5].time)
    x = engine.update(fewer)
    assert engine.structure_change == "atom count changed from 6 to 4 (O1Cu5 -> Cu4)"
    assert math.isnan(x[engine.names.index("step_disp_max")])  # a new segment: no step yet
    engine.update(fewer)
    assert engine.structure_change is None


def test_nonfinite_positions_are_flagged_and_skipped() -> None:
    frames = random_stream(7, 12, TRICLINIC, "frame", seed=7)
    engine = FeatureEngine(**SMALL)  # type: ignore[arg-type]
    for f in frames[:8]:
        before = engine.update(f)
    broken = frames[8].positions.copy()
    broken[[1, 4]] = np.nan
    bad = Frame(
        broken,
        frames[8].numbers,
        velocities=frames[8].velocities,
        energy=math.inf,
        cell=TRICLINIC,
        step=frames[8].step,
        time=frames[8].time,
    )
    x = engine.update(bad)
    names = engine.names
    assert x[names.index("nonfinite_count")] == 6 + 1
    window = [names.index(n) for n in WINDOW_FEATURES]
    np.testing.assert_array_equal(x[window], before[window])  # the window did not move
    frame_only = [k for k, n in enumerate(names) if FEATURES[n].kind == "frame"]
    assert np.isnan(x[frame_only][:-1]).all()
    assert engine.attribution().moved_most.tolist() == [1, 4]
    # The stream goes on as if the broken frame had not been there.
    history = frames[:8]
    for f in frames[9:]:
        history = [*history, f]
        assert_matches(names, engine.update(f), reference.features(history, **SMALL))  # type: ignore[arg-type]


def test_nonfinite_energy_forces_and_velocities_make_only_those_features_unavailable() -> None:
    frames = random_stream(5, 10, np.eye(3) * 7.0, "frame", seed=8)
    frames[6].energy = math.nan
    assert frames[7].velocities is not None and frames[7].forces is not None
    frames[7].velocities[0, 0] = math.inf
    frames[7].forces[3, 1] = math.nan
    engine = FeatureEngine(**SMALL)  # type: ignore[arg-type]
    for t, f in enumerate(frames):
        x = engine.update(f)
        assert_matches(engine.names, x, reference.features(frames[: t + 1], **SMALL))  # type: ignore[arg-type]
        if t == 7:
            assert x[engine.names.index("nonfinite_count")] == 2
            assert math.isnan(x[engine.names.index("kinetic_temperature")])
            assert math.isnan(x[engine.names.index("max_force")])
            assert not math.isnan(x[engine.names.index("step_disp_max")])


def test_missing_data_gives_nan_for_exactly_the_features_that_need_it() -> None:
    rng = np.random.default_rng(9)
    positions = rng.uniform(0, 6, size=(6, 3))
    engine = FeatureEngine(**SMALL)  # type: ignore[arg-type]
    for step in range(8):  # positions and atomic numbers only: no cell, time, energy, forces
        x = engine.update(Frame(positions + 0.1 * rng.normal(size=(6, 3)), [6] * 6, step=step))
    unavailable = {n for n, v in zip(engine.names, x, strict=True) if math.isnan(v)}
    missing = ("velocities", "energy", "forces", "cell")
    needs = {n for n in engine.names if any(w in FEATURES[n].needs for w in missing)}
    assert unavailable == needs


def test_a_single_atom_and_no_atoms_are_answers_not_crashes() -> None:
    engine = FeatureEngine(**SMALL)  # type: ignore[arg-type]
    frames = [Frame([[0.1 * t, 0, 0]], [1], cell=np.eye(3) * 5, time=float(t)) for t in range(6)]
    for t, f in enumerate(frames):
        x = engine.update(f)
        assert_matches(engine.names, x, reference.features(frames[: t + 1], **SMALL))  # type: ignore[arg-type]
    assert math.isnan(x[engine.names.index("step_min_dist")])
    assert x[engine.names.index("disp_mean")] == pytest.approx(0.1)
    assert engine.attribution().closest_pair == (-1, -1)
    empty = engine.update(Frame(np.zeros((0, 3)), [], energy=0.0))
    assert engine.structure_change == "atom count changed from 1 to 0 (H1 -> nothing)"
    assert empty[engine.names.index("nonfinite_count")] == 0
    assert np.isnan(np.delete(empty, engine.names.index("nonfinite_count"))).all()
    assert engine.attribution().moved_most.size == 0


def test_a_huge_cell_costs_nothing_extra_and_stays_exact() -> None:
    rng = np.random.default_rng(10)
    cell = np.eye(3) * 1e6
    cluster = rng.uniform(0, 6, size=(40, 3)) + 1e6 - 3.0  # straddles the periodic boundary
    frames = []
    for t in range(6):
        cluster = cluster + rng.normal(scale=0.05, size=cluster.shape)
        frames.append(Frame(cluster % 1e6, [18] * 40, cell=cell, time=2.0 * t, energy=-1.0))
    engine = FeatureEngine(**SMALL)  # type: ignore[arg-type]
    for f in frames:
        x = engine.update(f)
    expected = reference.closest_pair(frames[-1].positions, cell, np.ones(3, bool))
    assert x[engine.names.index("step_min_dist")] == pytest.approx(expected[0], rel=1e-9)
    assert engine.attribution().closest_pair == expected[1:]
    assert x[engine.names.index("step_disp_max")] < 0.5  # no jump across the boundary


def test_attribution_names_the_atom_that_moved_and_the_closest_pair() -> None:
    frames = random_stream(10, 5, np.eye(3) * 7.0, "frame", seed=11, scale=0.05)
    kicked = frames[-1].positions.copy()
    kicked[6] += [0.9, 0.0, 0.0]
    frames.append(Frame(kicked, frames[-1].numbers, cell=np.eye(3) * 7.0))
    engine = FeatureEngine(top_atoms=3, **SMALL)  # type: ignore[arg-type]
    for f in frames:
        engine.update(f)
    attribution = engine.attribution()
    assert attribution.moved_most[0] == 6 and len(attribution.moved_most) == 3
    _, i, j = reference.closest_pair(kicked, np.eye(3) * 7.0, np.ones(3, bool))
    assert attribution.closest_pair == (i, j)


def test_each_update_returns_a_fresh_vector_in_catalogue_order() -> None:
    engine = FeatureEngine(**SMALL)  # type: ignore[arg-type]
    frame = Frame(np.eye(3), [1, 1, 1])
    a, b = engine.update(frame), engine.update(frame)
    assert a is not b and a.dtype == np.float64 and a.shape == (len(FEATURE_NAMES),)
    assert engine.names == FEATURE_NAMES and len(WINDOW_FEATURES) == 27


def test_layout_constants_follow_the_catalogue() -> None:
    spelled = {
        "O_STEP_DISP_MAX": "step_disp_max",
        "O_STEP_MIN_DIST": "step_min_dist",
        "O_TEMPERATURE": "kinetic_temperature",
        "O_ENERGY": "energy_per_atom",
        "O_DRIFT": "energy_drift",
        "O_MAX_FORCE": "max_force",
        "O_NONFINITE": "nonfinite_count",
        "O_DISP_KURT": "disp_kurtosis",
        "O_RMS_V": "rms_velocity",
        "O_CREST": "crest_factor",
        "O_IMPULSE": "impulse_factor",
        "O_FRAME_VAR": "frame_variance",
        "O_ANISO": "anisotropy",
        "O_FREQ": "dominant_freq",
        "O_ENTROPY": "spectral_entropy",
        "O_PEAK_RATIO": "spectral_peak_ratio",
        "O_E_MEAN": "energy_mean",
        "O_E_STD": "energy_std",
        "O_E_TREND": "energy_trend",
        "O_MIN_DIST": "min_interatomic_dist",
        "O_RDF_POS": "rdf_first_peak_pos",
        "O_RDF_HEIGHT": "rdf_first_peak_height",
        "O_VACF_DECAY": "vacf_initial_decay",
        "O_VACF_ZERO": "vacf_zero_crossing",
    }
    slots = {k: v for k, v in vars(_kernels_update).items() if k.startswith("O_")}
    for constant, value in slots.items():
        assert FEATURE_NAMES[value] == spelled.get(constant, constant[2:].lower()), constant
    assert sorted(slots.values()) == list(range(len(FEATURE_NAMES)))
    assert len(FEATURE_NAMES) == _kernels_update.N_FEATURES


def test_options_are_validated() -> None:
    for bad in ({"window": 3}, {"rdf_stride": 0}, {"skin": 0.0}, {"rdf_cutoff": math.inf}):
        with pytest.raises(ValueError):
            FeatureEngine(**bad)  # type: ignore[arg-type]
    assert lag_set(4).tolist() == [1, 2, 3]
    assert lag_set(50).tolist() == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 49]


@pytest.mark.skipif(not JIT, reason="compilation only happens with the JIT on")
def test_warmup_compiles_everything_the_first_frame_needs(small_md: list[Frame]) -> None:
    seconds = warmup()
    assert seconds > 0
    signatures = len(_kernels_update._update.signatures)
    engine = FeatureEngine()
    for frame in small_md[:3]:
        engine.update(frame)
    engine.update(Frame(small_md[0].positions, small_md[0].numbers))  # open, nothing else
    assert len(_kernels_update._update.signatures) == signatures
