"""The per-frame driver: one call takes a frame and updates every feature (private).

:func:`_update` reads the frame's arrays and the engine's preallocated state, and writes
the feature vector. It returns a status: ``OK``, or a request the engine answers before
calling again (the atoms changed species, a pair list needs more room). Until the commit
point it changes nothing but scratch space, so a retry is safe.

The index constants below say where each piece of state lives. They are literals in this
module on purpose: Numba's on-disk cache only notices edits to the module that holds a
kernel, so a layout defined elsewhere could go stale in the cache.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from trajwatch._borrow import borrow
from trajwatch._kernel_cache import drop_stale_cache
from trajwatch.features._kernels import (
    HIST_SIZE,
    _anisotropy,
    _central_moments,
    _dft_direct,
    _dft_slide,
    _first_peak,
    _hist_add,
    _hist_bins,
    _hist_quantile,
    _inv3,
    _minimum_image,
    _slope,
    _spectral,
    _zero_crossing,
)
from trajwatch.features._kernels_neighbors import (
    _closest_pair,
    _list_min,
    _list_rdf,
    _pairs_within,
    _rebase,
    _split_at_cutoff,
)

# --- kernel return codes
OK = 0
SPECIES_CHANGED = 1
GROW_CONTACT = 2
GROW_RDF = 3

# --- positions of the features in the output vector (tests check the catalogue order)
O_STEP_DISP_MAX = 0  # step_disp_max
O_STEP_MIN_DIST = 1  # step_min_dist
O_TEMPERATURE = 2  # kinetic_temperature
O_ENERGY = 3  # energy_per_atom
O_DRIFT = 4  # energy_drift
O_MAX_FORCE = 5  # max_force
O_NONFINITE = 6  # nonfinite_count
O_DISP_MEAN = 7  # disp_mean
O_DISP_STD = 8  # disp_std
O_DISP_SKEW = 9  # disp_skew
O_DISP_KURT = 10  # disp_kurtosis
O_DISP_MAX = 11  # disp_max
O_DISP_MEDIAN = 12  # disp_median
O_DISP_P95 = 13  # disp_p95
O_RMS_V = 14  # rms_velocity
O_CREST = 15  # crest_factor
O_IMPULSE = 16  # impulse_factor
O_FRAME_VAR = 17  # frame_variance
O_ANISO = 18  # anisotropy
O_FREQ = 19  # dominant_freq
O_ENTROPY = 20  # spectral_entropy
O_PEAK_RATIO = 21  # spectral_peak_ratio
O_MSD_MEAN = 22  # msd_mean
O_MSD_STD = 23  # msd_std
O_MSD_FINAL = 24  # msd_final
O_MSD_SLOPE = 25  # msd_slope
O_E_MEAN = 26  # energy_mean
O_E_STD = 27  # energy_std
O_E_TREND = 28  # energy_trend
O_MIN_DIST = 29  # min_interatomic_dist
O_RDF_POS = 30  # rdf_first_peak_pos
O_RDF_HEIGHT = 31  # rdf_first_peak_height
O_VACF_DECAY = 32  # vacf_initial_decay
O_VACF_ZERO = 33  # vacf_zero_crossing
N_FEATURES = 34

# --- integer scalars (ibuf)
I_HEAD = 0  # ring slot the next frame goes to
I_COUNT = 1  # frames in the window (<= W)
I_PUSHED = 2  # frames taken since the last reset
I_UCUR = 3  # which of the two unwrapped-position buffers is current
I_HAVE_PREV = 4
I_NCONTACT = 5  # pairs in the contact list, -1: must be built
I_NRDF = 6  # pairs in the RDF list, -1: must be built
I_NEED = 7  # pairs a list needs when the kernel asks for room
I_CLOSEST_I = 8
I_CLOSEST_J = 9
I_HAVE_E0 = 10
I_RDF_AGE = 11  # frames the RDF list has served since its build
I_LAST_BAD = 12  # the latest frame had non-finite positions
I_CONTACT_BUILDS = 13
I_RDF_BUILDS = 14
I_CONTACT_PBC = 15  # 3 entries: pbc when the contact list was built
I_RDF_PBC = 18  # 3 entries
I_RDF_STRIDE = 21
I_FRONT = 22  # frames in the front stack of the window aggregate (see _window_evict)
I_CONTACT_AGE = 23  # frames the contact list has served since its build
N_IBUF = 24

# --- float scalars (fbuf)
F_E0 = 0  # total energy at the drift origin (eV)
F_PREV_TIME = 1  # NaN when the previous frame had no time
F_CONTACT_R = 2  # contact list radius
F_CONTACT_D = 3  # minimum distance when the contact list was built
F_CONTACT_SKIN = 4  # the contact list's skin now (see _fit_skin)
F_RDF_SKIN = 5  # the RDF list's skin now
F_SKIN = 6  # the engine's skin: the contact list's least, half the RDF list's least
F_RDF_CUTOFF = 7
N_FBUF = 8

# --- 3x3 matrices (geom)
G_INV = 0  # inverse of the current cell
G_CONTACT = 1  # cell when the contact list was built
G_RDF = 2  # cell when the RDF list was built
G_EYE = 3  # the identity, for frames without a usable cell
N_GEOM = 4

# --- per-atom vectors (atoms)
A_PREV = 0  # previous frame's positions, as given
A_U = 1  # two buffers (1, 2) of unwrapped positions, swapped each frame
A_STEP = 3  # minimum-image step since the previous frame
A_BUILD = 4  # unwrapped positions when the contact list was built
A_RBUILD = 5  # unwrapped positions when the RDF list was built
A_VEL = 6  # finite-difference velocities
N_ATOMS_ROWS = 7

# --- columns of the per-frame ring (one row per window slot)
R_CLOCK = 0  # time in fs, or the step when frames carry no time
R_HAS_DISP = 1
R_DN = 2  # R_DN .. R_DN + 4: n, mean, M2, M3, M4 of this frame's displacements
R_DMEAN = 3
R_DMAX = 7
R_DSQ = 8  # sum of squared displacements
R_T = 9  # 6 entries: sum of step tensor xx, yy, zz, xy, xz, yz
R_HAS_V = 15
R_V2SUM = 16  # sum over all atoms of |v|²
R_C0 = 17  # mean over tagged atoms of |v|²
R_E = 18  # energy per atom, NaN if missing
R_DMIN = 19  # minimum interatomic distance, NaN if undefined
R_HAS_RDF = 20
R_RDF_NORM = 21  # this frame's RDF centres times the pair density (N - 1) / V
R_LAGS = 22  # then one MSD column per lag, one VACF column per lag, then N_AG columns:
# the frame's suffix aggregate while it is in the front stack (see _window_evict)

# --- the window aggregate: mergeable summaries of a run of frames (_merge)
AG_DN = 0  # 5 entries: n, mean, M2, M3, M4 of the displacements
AG_DMAX = 5
AG_DSQ = 6
AG_T = 7  # 6 entries: the step tensor sums
AG_SN = 13  # frames with displacements, and their mean displacement's mean and M2
AG_SMEAN = 14
AG_SM2 = 15
AG_NV = 16  # frames with velocities, their sums of |v|² and the tagged atoms' mean |v|²
AG_V2 = 17
AG_C0 = 18
AG_NE = 19  # frames with an energy: n, mean clock, mean energy, co-moments tt, te, ee
AG_ET = 20
AG_EE = 21
AG_ETT = 22
AG_ETE = 23
AG_EEE = 24
AG_DMIN = 25
AG_RDF = 26  # sum of the frames' RDF normalisations
N_AG = 27

# --- rows of acc: the back stack's aggregate, scratch aggregates, running lag sums
C_BACK = 0
C_ITEM = 1
C_WINDOW = 2
C_MSD = 3  # 2 rows: high and low parts (two-sum) of each lag's MSD sum over its origins
C_VSUM = 5  # 2 rows: the same for the VACF
C_VCOUNT = 7  # origins with a VACF value, per lag
N_ACC_ROWS = 8

# --- the engine's state, packed into three flat arrays by element type (plus the DFT and
# the pair lists, which grow): Numba's dispatcher costs per argument, and 22 separate
# state arrays cost about 1 us a frame to pass. istate begins with the sizes that
# _carve needs to cut the flat arrays into the views the kernels use.
S_N = 0  # atoms
S_M = 1  # tagged atoms
S_W = 2  # window W
S_L = 3  # lags
S_BINS = 4  # RDF bins
S_WORK = 5  # length of a work row
N_SIZES = 6
N_WORK_ROWS = 11


def state_sizes(n: int, m: int, w: int, lags: int, bins: int, work: int) -> tuple[int, ...]:
    """Lengths of the flat float64, int64 and int32 state arrays (see :func:`_carve`)."""
    floats = (N_FBUF + N_GEOM * 9 + N_ATOMS_ROWS * n * 3 + 2 * n
              + w * (R_LAGS + 2 * lags + N_AG) + 2 * w * m * 3 + (w + 2) * bins
              + N_WORK_ROWS * work + N_ACC_ROWS * max(N_AG, lags))  # fmt: skip
    ints = N_SIZES + N_IBUF + m + lags + HIST_SIZE + m + 1
    return floats, ints, n + w * n


@njit(cache=True, nogil=True)
def _carve(fstate: np.ndarray, istate: np.ndarray, i32state: np.ndarray):  # type: ignore[no-untyped-def]
    """The views of the packed state: ibuf, fbuf, geom, atoms, disp, masses, numbers0,
    tagged, lags, ring, ring_u, ring_v, ring_bins, hist, rdf_ring, rstart, work, acc."""
    n = istate[S_N]
    m = istate[S_M]
    w = istate[S_W]
    nl = istate[S_L]
    bins = istate[S_BINS]
    ww = istate[S_WORK]
    o = N_SIZES
    ibuf = istate[o : o + N_IBUF]
    o += N_IBUF
    tagged = istate[o : o + m]
    o += m
    lags = istate[o : o + nl]
    o += nl
    hist = istate[o : o + HIST_SIZE]
    o += HIST_SIZE
    rstart = istate[o : o + m + 1]
    o = 0
    fbuf = fstate[o : o + N_FBUF]
    o += N_FBUF
    geom = fstate[o : o + N_GEOM * 9].reshape((N_GEOM, 3, 3))
    o += N_GEOM * 9
    atoms = fstate[o : o + N_ATOMS_ROWS * n * 3].reshape((N_ATOMS_ROWS, n, 3))
    o += N_ATOMS_ROWS * n * 3
    disp = fstate[o : o + n]
    o += n
    masses = fstate[o : o + n]
    o += n
    cols = R_LAGS + 2 * nl + N_AG
    ring = fstate[o : o + w * cols].reshape((w, cols))
    o += w * cols
    ring_u = fstate[o : o + w * 3 * m].reshape((w, 3, m))  # x, y, z rows: see _push_lags
    o += w * 3 * m
    ring_v = fstate[o : o + w * 3 * m].reshape((w, 3, m))
    o += w * m * 3
    rdf_ring = fstate[o : o + (w + 2) * bins].reshape((w + 2, bins))
    o += (w + 2) * bins
    work = fstate[o : o + N_WORK_ROWS * ww].reshape((N_WORK_ROWS, ww))
    o += N_WORK_ROWS * ww
    ac = max(N_AG, nl)
    acc = fstate[o : o + N_ACC_ROWS * ac].reshape((N_ACC_ROWS, ac))
    numbers0 = i32state[:n]
    ring_bins = i32state[n : n + w * n].reshape((w, n))
    return (ibuf, fbuf, geom, atoms, disp, masses, numbers0, tagged, lags, ring, ring_u,
            ring_v, ring_bins, hist, rdf_ring, rstart, work, acc)  # fmt: skip


# An RDF list that has served this many frames gets its pairs split at the cutoff
# (_split_at_cutoff): that costs about as much again as the build, which a list rebuilt
# often (a liquid, a changing cell) would pay for no gain; a solid's list lives on.
RDF_SPLIT_AGE = 500

# Each list's skin follows the motion (_fit_skin): a list that moving atoms made stale in
# fewer than SKIN_GROW_AGE frames is rebuilt with a skin 1.5 times wider (up to
# SKIN_MAX times the least), and one that served SKIN_SHRINK_AGE frames with a skin
# above the least is rebuilt with a narrower one, so a hot stretch costs rebuilds for a
# while, not a wide list for the rest of the run.
SKIN_GROW_AGE = 100
SKIN_SHRINK_AGE = 2000
SKIN_MAX = 4.0

# Values whose spread is below this fraction of their mean count as constant: skew,
# kurtosis and the spectrum of a constant are NaN, not rounding noise.
FLAT = 1e-12

# Kinetic energy of 1 amu at 1 Å/fs in eV, and kB in eV/K (trajwatch.units, as literals).
_AMU_A2_PER_FS2_IN_EV = 103.6426957
_KB_EV_PER_K = 8.617330337217213e-05


_EXPONENT = 0x7FF0000000000000  # the exponent bits of a float64: all set for inf and NaN


@njit(cache=True, nogil=True)
def _count_nonfinite(a: np.ndarray) -> int:
    """Entries of the C-contiguous (N, 3) ``a`` that are NaN or infinite.

    Read as integers: a branch-free integer sum that the compiler vectorises (a float
    test per entry does not), about 5x faster at 10,000 atoms.
    """
    bits = a.reshape(a.size).view(np.int64)
    bad = 0
    for i in range(bits.size):
        bad += (bits[i] & _EXPONENT) == _EXPONENT
    return bad


@njit(cache=True, nogil=True)
def _moved(u: np.ndarray, ref: np.ndarray) -> float:
    """Sum of the two largest |u_i - ref_i|: how much closer any pair can have come."""
    a = 0.0
    b = 0.0
    for i in range(u.shape[0]):
        dx = u[i, 0] - ref[i, 0]
        dy = u[i, 1] - ref[i, 1]
        dz = u[i, 2] - ref[i, 2]
        d2 = dx * dx + dy * dy + dz * dz
        if d2 > a:
            b = a
            a = d2
        elif d2 > b:
            b = d2
    return math.sqrt(a) + math.sqrt(b)


@njit(cache=True, nogil=True)
def _same_cell(
    cell: np.ndarray, pbc: np.ndarray, built: np.ndarray, ibuf: np.ndarray, at: int
) -> bool:
    for a in range(3):
        if (1 if pbc[a] else 0) != ibuf[at + a]:
            return False
        for k in range(3):
            if cell[a, k] != built[a, k]:
                return False
    return True


@njit(cache=True, nogil=True)
def _remember_cell(
    cell: np.ndarray, pbc: np.ndarray, built: np.ndarray, ibuf: np.ndarray, at: int
) -> None:
    for a in range(3):
        ibuf[at + a] = 1 if pbc[a] else 0
        for k in range(3):
            built[a, k] = cell[a, k]


@njit(cache=True, nogil=True)
def _geometry(cell: np.ndarray, pbc: np.ndarray, has_cell: bool, geom: np.ndarray):  # type: ignore[no-untyped-def]
    """The cell to use (the identity for none or a flat one), its pbc, and its volume."""
    inv = geom[G_INV]
    det = _inv3(cell, inv) if has_cell else 0.0
    if det == 0.0:
        inv[:, :] = geom[G_EYE]
        return geom[G_EYE], np.zeros(3, dtype=np.bool_), 0.0
    return cell, pbc, abs(det)


@njit(cache=True, nogil=True)
def _advance(
    positions: np.ndarray,
    atoms: np.ndarray,
    have_prev: bool,
    u_old: np.ndarray,
    u_new: np.ndarray,
    h: np.ndarray,
    inv: np.ndarray,
    per: np.ndarray,
) -> None:
    """Step since the previous frame (minimum image) and the new unwrapped positions."""
    n = positions.shape[0]
    steps = atoms[A_STEP]
    if not have_prev:
        u_new[:n] = positions
        return
    previous = atoms[A_PREV]
    for i in range(n):
        for k in range(3):
            steps[i, k] = positions[i, k] - previous[i, k]
    if per[0] or per[1] or per[2]:
        _minimum_image(steps, h, inv, per)
    for i in range(n):
        for k in range(3):
            u_new[i, k] = u_old[i, k] + steps[i, k]


@njit(cache=True, nogil=True)
def _fit_skin(skin: float, age: int, least: float) -> float:
    """The skin for a list rebuilt in the same cell after serving ``age`` frames."""
    if age < SKIN_GROW_AGE:
        return min(skin * 1.5, SKIN_MAX * least)
    if age >= SKIN_SHRINK_AGE:
        return max(skin / 1.5, least)
    return skin


@njit(cache=True, nogil=True)
def _contact(
    positions: np.ndarray,
    u_new: np.ndarray,
    h: np.ndarray,
    inv: np.ndarray,
    per: np.ndarray,
    ibuf: np.ndarray,
    fbuf: np.ndarray,
    geom: np.ndarray,
    atoms: np.ndarray,
    cpairs: np.ndarray,
    cshift: np.ndarray,
    out: np.ndarray,
) -> int:
    """``out[:3]`` = closest pair from the contact list, rebuilt only when it could be wrong."""
    n = positions.shape[0]
    skin = fbuf[F_CONTACT_SKIN]
    guess = fbuf[F_CONTACT_D] + skin
    if ibuf[I_NCONTACT] >= 0 and _same_cell(h, per, geom[G_CONTACT], ibuf, I_CONTACT_PBC):
        _list_min(u_new, cpairs, cshift, ibuf[I_NCONTACT], out)
        # A pair outside the list was >= R apart at the build and has closed by at most
        # the two largest moves since: the list minimum is exact if below that.
        age = ibuf[I_CONTACT_AGE] + 1  # frames served, this one included
        if out[0] <= fbuf[F_CONTACT_R] - _moved(u_new, atoms[A_BUILD]) and (
            age < SKIN_SHRINK_AGE or skin <= fbuf[F_SKIN]
        ):
            ibuf[I_CONTACT_AGE] = age
            return OK
        guess = out[0]
        skin = _fit_skin(skin, age, fbuf[F_SKIN])
        fbuf[F_CONTACT_SKIN] = skin
    # Built from the frame's positions (see _rebase), evaluated on u from then on.
    _closest_pair(positions, h, inv, per, guess if math.isfinite(guess) else 0.0, out)
    radius = out[0] + 2.0 * skin
    half = n >= 2  # a runtime bool: literals True/False would each compile a copy
    count = _pairs_within(
        positions,
        h,
        inv,
        per,
        radius,
        np.arange(n),
        half,
        cpairs,
        cshift,
        out[3:],
        np.empty(0, dtype=np.int64),
    )
    _rebase(cpairs, cshift, count, positions, u_new)
    if count > cpairs.shape[0]:
        ibuf[I_NCONTACT] = -1
        ibuf[I_NEED] = count
        return GROW_CONTACT
    ibuf[I_NCONTACT] = count
    ibuf[I_CONTACT_AGE] = 0
    fbuf[F_CONTACT_R] = radius
    fbuf[F_CONTACT_D] = out[0]
    atoms[A_BUILD, :n] = u_new[:n]
    _remember_cell(h, per, geom[G_CONTACT], ibuf, I_CONTACT_PBC)
    ibuf[I_CONTACT_BUILDS] += 1
    _list_min(u_new, cpairs, cshift, count, out)
    return OK


@njit(cache=True, nogil=True)
def _rdf_list(
    positions: np.ndarray,
    u_new: np.ndarray,
    h: np.ndarray,
    inv: np.ndarray,
    per: np.ndarray,
    ibuf: np.ndarray,
    fbuf: np.ndarray,
    geom: np.ndarray,
    atoms: np.ndarray,
    tagged: np.ndarray,
    rpairs: np.ndarray,
    rshift: np.ndarray,
    rstart: np.ndarray,
    scratch: np.ndarray,
) -> int:
    """Rebuild the RDF pair list if a pair could have come within the cutoff unseen.

    Its skin is twice the contact list's: it holds more pairs per atom, so rebuilding it
    is dearer, and a centre's pairs are counted only every ``rdf_stride`` frames.
    """
    n = positions.shape[0]
    skin = fbuf[F_RDF_SKIN]
    least = 2.0 * fbuf[F_SKIN]
    if ibuf[I_NRDF] >= 0 and _same_cell(h, per, geom[G_RDF], ibuf, I_RDF_PBC):
        age = ibuf[I_RDF_AGE] + 1  # frames served, this one included
        if _moved(u_new, atoms[A_RBUILD]) <= skin and (age < SKIN_SHRINK_AGE or skin <= least):
            ibuf[I_RDF_AGE] = age
            if age == RDF_SPLIT_AGE:  # a long-lived list: worth ordering for _list_rdf
                _split_at_cutoff(u_new, rpairs, rshift, rstart, fbuf[F_RDF_CUTOFF])
            return OK
        skin = _fit_skin(skin, age, least)
        fbuf[F_RDF_SKIN] = skin
    full = n < 2  # False, as a runtime bool (see _contact)
    count = _pairs_within(
        positions,
        h,
        inv,
        per,
        fbuf[F_RDF_CUTOFF] + skin,
        tagged,
        full,
        rpairs,
        rshift,
        scratch,
        rstart,
    )
    _rebase(rpairs, rshift, count, positions, u_new)
    if count > rpairs.shape[0]:
        ibuf[I_NRDF] = -1
        ibuf[I_NEED] = count
        return GROW_RDF
    ibuf[I_NRDF] = count
    ibuf[I_RDF_AGE] = 0
    atoms[A_RBUILD, :n] = u_new[:n]
    _remember_cell(h, per, geom[G_RDF], ibuf, I_RDF_PBC)
    ibuf[I_RDF_BUILDS] += 1
    return OK


@njit(cache=True, nogil=True)
def _push_displacements(
    steps: np.ndarray, disp: np.ndarray, row: np.ndarray, bins: np.ndarray, hist: np.ndarray
) -> None:
    """This frame's displacements: moments, maximum, step tensor, histogram bins."""
    dmax = 0.0
    dsq = 0.0
    txx = tyy = tzz = txy = txz = tyz = 0.0
    for i in range(steps.shape[0]):
        sx = steps[i, 0]
        sy = steps[i, 1]
        sz = steps[i, 2]
        d2 = sx * sx + sy * sy + sz * sz
        d = math.sqrt(d2)
        disp[i] = d
        dsq += d2
        dmax = max(dmax, d)
        txx += sx * sx
        tyy += sy * sy
        tzz += sz * sz
        txy += sx * sy
        txz += sx * sz
        tyz += sy * sz
    row[R_T + 0] = txx
    row[R_T + 1] = tyy
    row[R_T + 2] = tzz
    row[R_T + 3] = txy
    row[R_T + 4] = txz
    row[R_T + 5] = tyz
    n = steps.shape[0]
    _hist_bins(disp[:n], disp[:n].view(np.int64), bins)
    for i in range(n):
        _hist_add(hist, bins[i], 1)
    _central_moments(disp, row[R_DN : R_DN + 5])
    row[R_DMAX] = dmax
    row[R_DSQ] = dsq


@njit(cache=True, nogil=True)
def _push_velocities(
    v: np.ndarray, masses: np.ndarray, tagged: np.ndarray, row: np.ndarray, ring_v_slot: np.ndarray
) -> float:
    """Record |v|² sums and the tagged atoms' velocities; returns the kinetic energy (eV)."""
    v2sum = 0.0
    mv2 = 0.0
    for i in range(v.shape[0]):
        vv = v[i, 0] * v[i, 0] + v[i, 1] * v[i, 1] + v[i, 2] * v[i, 2]
        v2sum += vv
        mv2 += masses[i] * vv
    row[R_HAS_V] = 1.0
    row[R_V2SUM] = v2sum
    c0 = 0.0
    for m in range(tagged.shape[0]):
        i = tagged[m]
        for k in range(3):
            ring_v_slot[k, m] = v[i, k]
        c0 += v[i, 0] * v[i, 0] + v[i, 1] * v[i, 1] + v[i, 2] * v[i, 2]
    row[R_C0] = c0 / tagged.shape[0]
    return 0.5 * mv2 * _AMU_A2_PER_FS2_IN_EV


# Reassociation lets LLVM split each sum over atoms into vector lanes; the NaN and inf
# semantics stay IEEE (no "nnan"/"ninf"), which the non-finite checks rely on.
_SUMS = {"reassoc", "contract"}


@njit(cache=True, nogil=True, fastmath=_SUMS)
def _push_lags(
    u_new: np.ndarray,
    tagged: np.ndarray,
    ring: np.ndarray,
    ring_u: np.ndarray,
    ring_v: np.ndarray,
    lags: np.ndarray,
    slot: int,
    n_window: int,
) -> None:
    """MSD and VACF of the tagged atoms between this frame and each lag back.

    The rings hold x, y and z as separate rows of the tagged atoms, so each sum runs
    over contiguous memory and vectorises (summed in a different order than atom by
    atom: equal to ~1e-15 relative).
    """
    W = ring.shape[0]
    M = tagged.shape[0]
    L = lags.shape[0]
    row = ring[slot]
    for m in range(M):
        i = tagged[m]
        for k in range(3):
            ring_u[slot, k, m] = u_new[i, k]
    ux, uy, uz = ring_u[slot, 0], ring_u[slot, 1], ring_u[slot, 2]
    vx, vy, vz = ring_v[slot, 0], ring_v[slot, 1], ring_v[slot, 2]
    with_v = row[R_HAS_V] > 0.0
    for li in range(L):
        if lags[li] > n_window - 1:
            break
        back = (slot - lags[li]) % W
        ox, oy, oz = ring_u[back, 0], ring_u[back, 1], ring_u[back, 2]
        s = 0.0
        for m in range(M):
            dx = ux[m] - ox[m]
            dy = uy[m] - oy[m]
            dz = uz[m] - oz[m]
            s += dx * dx + dy * dy + dz * dz
        row[R_LAGS + li] = s / M
        if with_v and ring[back, R_HAS_V] > 0.0:
            px, py, pz = ring_v[back, 0], ring_v[back, 1], ring_v[back, 2]
            c = 0.0
            for m in range(M):
                c += vx[m] * px[m] + vy[m] * py[m] + vz[m] * pz[m]
            row[R_LAGS + L + li] = c / M


@njit(cache=True, nogil=True)
def _push_rdf(
    u_new: np.ndarray,
    rpairs: np.ndarray,
    rshift: np.ndarray,
    rstart: np.ndarray,
    phase: int,
    stride: int,
    cutoff: float,
    counts: np.ndarray,
) -> int:
    """Pair counts of this frame's share of the RDF centres (every ``stride``-th from
    ``phase``) into ``counts``; returns how many centres that was."""
    counts[:] = 0.0
    centres = 0
    for m in range(phase, rstart.shape[0] - 1, stride):
        _list_rdf(u_new, rpairs, rshift, rstart[m], rstart[m + 1], cutoff, counts)
        centres += 1
    return centres


@njit(cache=True, nogil=True)
def _push_signal(
    ring: np.ndarray,
    dft: np.ndarray,
    work: np.ndarray,
    head: int,
    n_window: int,
    pushed: int,
    old: float,
    old_present: bool,
    new: float,
    new_present: bool,
) -> None:
    """Slide the DFT of the frame signal (each frame's mean displacement) by one frame."""
    W = ring.shape[0]
    K = W // 2 + 1
    if pushed % W != 0:
        _dft_slide(dft[0, :K], dft[1, :K], dft[2], old, old_present, new, new_present)
        return
    # Every W frames: recompute from the ring, so rounding cannot pile up.
    values = work[9]
    present = work[10]
    values[:] = 0.0
    present[:] = 0.0
    for k in range(n_window):
        s = (head - n_window + k) % W
        if ring[s, R_HAS_DISP] > 0.0:
            values[W - n_window + k] = ring[s, R_DMEAN]
            present[W - n_window + k] = 1.0
    _dft_direct(values[:W], present[:W], dft[2], dft[0, :K], dft[1, :K])


@njit(cache=True, nogil=True)
def _empty_aggregate(out: np.ndarray) -> None:
    """``out[:N_AG]`` = the aggregate of no frames."""
    out[:N_AG] = 0.0
    out[AG_DMIN] = np.inf


@njit(cache=True, nogil=True)
def _frame_aggregate(row: np.ndarray, out: np.ndarray) -> None:
    """``out[:N_AG]`` = the aggregate of one frame, from its ring row."""
    _empty_aggregate(out)
    if row[R_HAS_DISP] > 0.0:
        for k in range(5):
            out[AG_DN + k] = row[R_DN + k]
        out[AG_DMAX] = row[R_DMAX]
        out[AG_DSQ] = row[R_DSQ]
        for c in range(6):
            out[AG_T + c] = row[R_T + c]
        out[AG_SN] = 1.0
        out[AG_SMEAN] = row[R_DMEAN]
    if row[R_HAS_V] > 0.0:
        out[AG_NV] = 1.0
        out[AG_V2] = row[R_V2SUM]
        out[AG_C0] = row[R_C0]
    if not math.isnan(row[R_E]):
        out[AG_NE] = 1.0
        out[AG_ET] = row[R_CLOCK]
        out[AG_EE] = row[R_E]
    if not math.isnan(row[R_DMIN]):
        out[AG_DMIN] = row[R_DMIN]
    if row[R_HAS_RDF] > 0.0:
        out[AG_RDF] = row[R_RDF_NORM]


@njit(cache=True, nogil=True)
def _merge(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """``out[:N_AG]`` = the aggregate of the frames of ``a`` followed by those of ``b``
    (``out`` may be ``a`` or ``b``). Moments and co-moments combine by shifting each
    part's central sums to the joint mean: exact, nothing subtracted from a running sum.
    """
    # displacements: n, mean, M2, M3, M4 (Pebay's pairwise update)
    na = a[AG_DN]
    nb = b[AG_DN]
    n = na + nb
    if nb == 0.0:
        m1, m2, m3, m4 = a[AG_DN + 1], a[AG_DN + 2], a[AG_DN + 3], a[AG_DN + 4]
    elif na == 0.0:
        m1, m2, m3, m4 = b[AG_DN + 1], b[AG_DN + 2], b[AG_DN + 3], b[AG_DN + 4]
    else:
        d = b[AG_DN + 1] - a[AG_DN + 1]
        a2, a3, a4 = a[AG_DN + 2], a[AG_DN + 3], a[AG_DN + 4]
        b2, b3, b4 = b[AG_DN + 2], b[AG_DN + 3], b[AG_DN + 4]
        dn = d / n
        dn2 = dn * dn
        m1 = a[AG_DN + 1] + dn * nb
        m2 = a2 + b2 + d * dn * na * nb
        m3 = a3 + b3 + d * dn2 * na * nb * (na - nb) + 3.0 * dn * (na * b2 - nb * a2)
        m4 = (
            a4 + b4 + d * dn2 * dn * na * nb * (na * na - na * nb + nb * nb)
            + 6.0 * dn2 * (na * na * b2 + nb * nb * a2) + 4.0 * dn * (na * b3 - nb * a3)
        )  # fmt: skip
    # frames' mean displacements: n, mean, M2
    sa = a[AG_SN]
    sb = b[AG_SN]
    sn = sa + sb
    if sb == 0.0:
        s1, s2 = a[AG_SMEAN], a[AG_SM2]
    elif sa == 0.0:
        s1, s2 = b[AG_SMEAN], b[AG_SM2]
    else:
        d = b[AG_SMEAN] - a[AG_SMEAN]
        s1 = a[AG_SMEAN] + d * sb / sn
        s2 = a[AG_SM2] + b[AG_SM2] + d * d * sa * sb / sn
    # energies against the clock: n, means, co-moments
    ea = a[AG_NE]
    eb = b[AG_NE]
    en = ea + eb
    if eb == 0.0:
        et, ee, ett, ete, eee = a[AG_ET], a[AG_EE], a[AG_ETT], a[AG_ETE], a[AG_EEE]
    elif ea == 0.0:
        et, ee, ett, ete, eee = b[AG_ET], b[AG_EE], b[AG_ETT], b[AG_ETE], b[AG_EEE]
    else:
        dt = b[AG_ET] - a[AG_ET]
        de = b[AG_EE] - a[AG_EE]
        w = ea * eb / en
        et = a[AG_ET] + dt * eb / en
        ee = a[AG_EE] + de * eb / en
        ett = a[AG_ETT] + b[AG_ETT] + dt * dt * w
        ete = a[AG_ETE] + b[AG_ETE] + dt * de * w
        eee = a[AG_EEE] + b[AG_EEE] + de * de * w
    out[AG_DMAX] = max(a[AG_DMAX], b[AG_DMAX])
    out[AG_DMIN] = min(a[AG_DMIN], b[AG_DMIN])
    out[AG_DSQ] = a[AG_DSQ] + b[AG_DSQ]
    for c in range(6):
        out[AG_T + c] = a[AG_T + c] + b[AG_T + c]
    out[AG_NV] = a[AG_NV] + b[AG_NV]
    out[AG_V2] = a[AG_V2] + b[AG_V2]
    out[AG_C0] = a[AG_C0] + b[AG_C0]
    out[AG_RDF] = a[AG_RDF] + b[AG_RDF]
    out[AG_DN] = n
    out[AG_DN + 1] = m1
    out[AG_DN + 2] = m2
    out[AG_DN + 3] = m3
    out[AG_DN + 4] = m4
    out[AG_SN] = sn
    out[AG_SMEAN] = s1
    out[AG_SM2] = s2
    out[AG_NE] = en
    out[AG_ET] = et
    out[AG_EE] = ee
    out[AG_ETT] = ett
    out[AG_ETE] = ete
    out[AG_EEE] = eee


@njit(cache=True, nogil=True)
def _two_sum_add(high: np.ndarray, low: np.ndarray, k: int, x: float) -> None:
    """``high[k] + low[k] += x``, the rounding error of each addition kept in ``low``
    (Knuth's two-sum): a running sum that values are also taken out of stays exact to
    ~1e-32 of the largest value it held, however large that was."""
    h = high[k]
    total = h + x
    back = total - h
    low[k] += (h - (total - back)) + (x - back)
    high[k] = total


@njit(cache=True, nogil=True)
def _window_evict(ring: np.ndarray, ibuf: np.ndarray, acc: np.ndarray, lags: np.ndarray) -> None:
    """Take the oldest frame out of the full window's aggregate and lag sums.

    The aggregate is a two-stack queue: frames enter the back stack, whose aggregate is
    kept (one merge per frame); they leave from the front stack, which holds each
    frame's suffix aggregate (it and every later front frame). When the front is empty,
    the back's frames become the front, their suffix aggregates built newest to oldest:
    W merges once every W frames, so O(1) merges per frame on average, and no value is
    ever subtracted.
    """
    W = ring.shape[0]
    L = lags.shape[0]
    oldest = ibuf[I_HEAD]  # the window is full: the next slot holds the oldest frame
    suffix = R_LAGS + 2 * L
    front = ibuf[I_FRONT]
    if front == 0:  # flip: every frame of the window moves to the front
        item = acc[C_ITEM]
        s = (oldest + W - 1) % W
        _frame_aggregate(ring[s], ring[s, suffix:])
        for _ in range(W - 1):
            s = (s + W - 1) % W
            _frame_aggregate(ring[s], item)
            _merge(item, ring[(s + 1) % W, suffix:], ring[s, suffix:])
        _empty_aggregate(acc[C_BACK])
        front = W
    ibuf[I_FRONT] = front - 1
    # A lag's value lives in the frame it ends at and counts while the frame it starts
    # at is in the window: the frame lags[li] after the oldest loses lag li now.
    for li in range(L):
        r = ring[(oldest + lags[li]) % W]
        _two_sum_add(acc[C_MSD], acc[C_MSD + 1], li, -r[R_LAGS + li])
        value = r[R_LAGS + L + li]
        if not math.isnan(value):
            _two_sum_add(acc[C_VSUM], acc[C_VSUM + 1], li, -value)
            acc[C_VCOUNT, li] -= 1.0


@njit(cache=True, nogil=True)
def _window_push(
    ring: np.ndarray, ibuf: np.ndarray, acc: np.ndarray, lags: np.ndarray, slot: int,
    n_window: int,
) -> None:  # fmt: skip
    """Add the newest frame (ring ``slot``, the window now ``n_window`` frames) to the
    back stack's aggregate and to the sums of the lags it ends."""
    L = lags.shape[0]
    row = ring[slot]
    if n_window == 1:  # a segment's first frame: nothing before it
        acc[:] = 0.0
        _empty_aggregate(acc[C_BACK])
        ibuf[I_FRONT] = 0
    item = acc[C_ITEM]
    _frame_aggregate(row, item)
    _merge(acc[C_BACK], item, acc[C_BACK])
    for li in range(L):
        if lags[li] > n_window - 1:
            break
        _two_sum_add(acc[C_MSD], acc[C_MSD + 1], li, row[R_LAGS + li])
        value = row[R_LAGS + L + li]
        if not math.isnan(value):
            _two_sum_add(acc[C_VSUM], acc[C_VSUM + 1], li, value)
            acc[C_VCOUNT, li] += 1.0


@njit(cache=True, nogil=True)
def _update(
    positions: np.ndarray,
    numbers: np.ndarray,
    velocities: np.ndarray,
    forces: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    energy: float,
    time: float,
    step: float,
    has_velocities: bool,
    has_forces: bool,
    has_cell: bool,
    has_energy: bool,
    has_time: bool,
    out: np.ndarray,
    fstate: np.ndarray,
    istate: np.ndarray,
    i32state: np.ndarray,
    dft: np.ndarray,
    cpairs: np.ndarray,
    cshift: np.ndarray,
    rpairs: np.ndarray,
    rshift: np.ndarray,
) -> int:
    """Take one frame: update the state and write every feature into ``out``."""
    b = borrow  # no reference counting below (trajwatch._borrow)
    positions, numbers, velocities, forces, cell, pbc, out = (
        b(positions), b(numbers), b(velocities), b(forces), b(cell), b(pbc), b(out)
    )  # fmt: skip
    fstate, istate, i32state, dft = b(fstate), b(istate), b(i32state), b(dft)
    cpairs, cshift, rpairs, rshift = b(cpairs), b(cshift), b(rpairs), b(rshift)
    (ibuf, fbuf, geom, atoms, disp, masses, numbers0, tagged, lags, ring, ring_u, ring_v,
     ring_bins, hist, rdf_ring, rstart, work, acc) = _carve(fstate, istate, i32state)  # fmt: skip
    n = positions.shape[0]
    for i in range(n):
        if numbers[i] != numbers0[i]:
            return SPECIES_CHANGED
    out[:] = np.nan

    # --- what is usable in this frame
    bad_positions = _count_nonfinite(positions)
    bad_velocities = _count_nonfinite(velocities) if has_velocities else 0
    bad_forces = _count_nonfinite(forces) if has_forces else 0
    energy_ok = has_energy and math.isfinite(energy)
    out[O_NONFINITE] = bad_positions + bad_velocities + bad_forces + (has_energy and not energy_ok)
    if bad_positions > 0:  # the frame is not taken; the window stays what it was
        ibuf[I_LAST_BAD] = 1
        _window(out, ibuf, fbuf, ring, hist, rdf_ring, dft, lags, work, acc, n)
        return OK

    # --- step, unwrapped positions, velocities (the frame's own, else finite differences)
    h, per, volume = _geometry(cell, pbc, has_cell, geom)
    inv = geom[G_INV]
    periodic = per[0] or per[1] or per[2]
    cur = ibuf[I_UCUR]
    u_new = atoms[A_U + 1 - cur]
    have_prev = ibuf[I_HAVE_PREV] == 1
    _advance(positions, atoms, have_prev, atoms[A_U + cur], u_new, h, inv, per)
    v = velocities
    v_avail = has_velocities and bad_velocities == 0
    prev_time = fbuf[F_PREV_TIME]
    if not has_velocities and have_prev and has_time and time > prev_time:  # NaN: False
        v = atoms[A_VEL]
        v[:n] = atoms[A_STEP, :n] * (1.0 / (time - prev_time))
        v_avail = True

    # --- pair lists (may ask for room and be called again: nothing committed yet)
    tmp = work[0]
    tmp[:3] = np.nan
    if n >= 2:
        status = _contact(
            positions, u_new, h, inv, per, ibuf, fbuf, geom, atoms, cpairs, cshift, tmp
        )
        if status != OK:
            return status
    dmin = tmp[0]
    closest_i = int(tmp[1]) if n >= 2 else -1
    closest_j = int(tmp[2]) if n >= 2 else -1
    pushed = ibuf[I_PUSHED]
    rdf_on = periodic and n >= 2  # g(r) needs a volume
    if rdf_on:
        status = _rdf_list(
            positions,
            u_new,
            h,
            inv,
            per,
            ibuf,
            fbuf,
            geom,
            atoms,
            tagged,
            rpairs,
            rshift,
            rstart,
            tmp[3:],
        )
        if status != OK:
            return status

    # ================================ commit: from here on the state changes
    W = ring.shape[0]
    head = ibuf[I_HEAD]
    count = ibuf[I_COUNT]
    slot = head
    old_present = False
    old_value = 0.0
    if count == W:  # evict the oldest frame
        _window_evict(ring, ibuf, acc, lags)
        if ring[slot, R_HAS_DISP] > 0.0:
            old_present = True
            old_value = ring[slot, R_DMEAN]
            for i in range(n):
                _hist_add(hist, ring_bins[slot, i], -1)
        if ring[slot, R_HAS_RDF] > 0.0:
            rdf_ring[W] -= rdf_ring[slot]  # counts are integers: the running sum is exact
    row = ring[slot]
    row[:] = np.nan
    row[R_CLOCK] = time if has_time else step
    row[R_HAS_DISP] = 1.0 if have_prev else 0.0
    row[R_HAS_V] = 0.0
    row[R_HAS_RDF] = 0.0
    if have_prev:
        _push_displacements(atoms[A_STEP, :n], disp, row, ring_bins[slot], hist)
    else:
        disp[:] = 0.0
    kinetic = _push_velocities(v, masses, tagged, row, ring_v[slot]) if v_avail else np.nan
    if energy_ok:
        row[R_E] = energy / n
    row[R_DMIN] = dmin
    n_window = min(count + 1, W)
    _push_lags(u_new, tagged, ring, ring_u, ring_v, lags, slot, n_window)
    if rdf_on:  # this frame's share of the RDF centres (spread so g(r) moves smoothly)
        stride = ibuf[I_RDF_STRIDE]
        centres = _push_rdf(
            u_new,
            rpairs,
            rshift,
            rstart,
            pushed % stride,
            stride,
            fbuf[F_RDF_CUTOFF],
            rdf_ring[slot],
        )
        if centres > 0:
            row[R_HAS_RDF] = 1.0
            row[R_RDF_NORM] = centres * (n - 1) / volume
            rdf_ring[W] += rdf_ring[slot]
    _window_push(ring, ibuf, acc, lags, slot, n_window)
    head = (head + 1) % W
    ibuf[I_HEAD] = head
    ibuf[I_COUNT] = n_window
    ibuf[I_PUSHED] = pushed + 1
    new_value = row[R_DMEAN] if have_prev else 0.0
    _push_signal(
        ring, dft, work, head, n_window, pushed + 1, old_value, old_present, new_value, have_prev
    )
    atoms[A_PREV, :n] = positions
    ibuf[I_UCUR] = 1 - cur
    ibuf[I_HAVE_PREV] = 1
    ibuf[I_LAST_BAD] = 0
    ibuf[I_CLOSEST_I] = closest_i
    ibuf[I_CLOSEST_J] = closest_j
    fbuf[F_PREV_TIME] = time if has_time else np.nan

    # --- per-frame features
    if have_prev:
        out[O_STEP_DISP_MAX] = row[R_DMAX]
    out[O_STEP_MIN_DIST] = dmin
    if v_avail:
        out[O_TEMPERATURE] = 2.0 * kinetic / (3.0 * n * _KB_EV_PER_K)
    if energy_ok:
        out[O_ENERGY] = energy / n
        if v_avail:
            total = energy + kinetic
            if ibuf[I_HAVE_E0] == 0:
                fbuf[F_E0] = total
                ibuf[I_HAVE_E0] = 1
            out[O_DRIFT] = (total - fbuf[F_E0]) / n
    if has_forces and bad_forces == 0:
        fmax = 0.0
        for i in range(n):
            fmax = max(fmax, forces[i, 0] ** 2 + forces[i, 1] ** 2 + forces[i, 2] ** 2)
        out[O_MAX_FORCE] = math.sqrt(fmax)
    _window(out, ibuf, fbuf, ring, hist, rdf_ring, dft, lags, work, acc, n)
    return OK


@njit(cache=True, nogil=True)
def _window(
    out: np.ndarray,
    ibuf: np.ndarray,
    fbuf: np.ndarray,
    ring: np.ndarray,
    hist: np.ndarray,
    rdf_ring: np.ndarray,
    dft: np.ndarray,
    lags: np.ndarray,
    work: np.ndarray,
    acc: np.ndarray,
    n_atoms: int,
) -> None:
    """Write the window features from the window aggregate, the lag sums, the histogram,
    the sliding DFT and the g(r) counts: O(1) merges, O(lags), O(bins)."""
    W = ring.shape[0]
    L = lags.shape[0]
    count = ibuf[I_COUNT]
    head = ibuf[I_HEAD]
    if count == 0 or n_atoms == 0:
        return
    oldest = head - count + W if head < count else head - count
    newest = head - 1 if head > 0 else W - 1
    g = acc[C_BACK]  # the window is the back stack, plus the front's oldest suffix if any
    if ibuf[I_FRONT] > 0:
        g = acc[C_WINDOW]
        _merge(ring[oldest, R_LAGS + 2 * L :], acc[C_BACK], g)
    dt = (ring[newest, R_CLOCK] - ring[oldest, R_CLOCK]) / (count - 1) if count > 1 else np.nan
    dmax = g[AG_DMAX]
    dsq = g[AG_DSQ]
    tensor = g[AG_T : AG_T + 6]
    ns = g[AG_SN]
    nv = g[AG_NV]
    v2 = g[AG_V2]
    c0 = g[AG_C0]
    ne = g[AG_NE]
    dmin = g[AG_DMIN]

    # displacement distribution (moments merged frame by frame, quantiles from the histogram)
    total = g[AG_DN]
    if total > 0.0:
        mean = g[AG_DN + 1]
        m2 = g[AG_DN + 2] / total
        out[O_DISP_MEAN] = mean
        out[O_DISP_STD] = math.sqrt(m2)
        if m2 > (FLAT * mean) ** 2 and m2 > 0.0:
            out[O_DISP_SKEW] = g[AG_DN + 3] / total / m2**1.5
            out[O_DISP_KURT] = g[AG_DN + 4] / total / (m2 * m2) - 3.0
        out[O_DISP_MAX] = dmax
        out[O_DISP_MEDIAN] = _hist_quantile(hist, int(total), 0.5)
        out[O_DISP_P95] = _hist_quantile(hist, int(total), 0.95)
        if dmax > 0.0:
            out[O_CREST] = dmax / math.sqrt(dsq / total)
            out[O_IMPULSE] = dmax / mean
        out[O_ANISO] = _anisotropy(tensor)
    if ns >= 2:
        smean = g[AG_SMEAN]
        var = g[AG_SM2]
        out[O_FRAME_VAR] = var / ns
        if var / ns > (FLAT * smean) ** 2:
            K = W // 2 + 1
            spec = work[8]
            _spectral(dft[0, :K], dft[1, :K], smean, W, dt, spec)
            out[O_FREQ] = spec[0]
            out[O_ENTROPY] = spec[1]
            out[O_PEAK_RATIO] = spec[2]
    if nv > 0:
        out[O_RMS_V] = math.sqrt(v2 / (n_atoms * nv))

    # MSD(lag), averaged over every origin in the window (the running sums of each lag)
    nl = 0
    while nl < L and lags[nl] <= count - 1:
        nl += 1
    msd = work[5]
    lag_time = work[6]
    vsum = work[9]  # (rows 9 and 10 are _push_signal's scratch, free by now)
    vcount = work[10]
    for li in range(nl):
        msd[li] = (acc[C_MSD, li] + acc[C_MSD + 1, li]) / (count - lags[li])
        vsum[li] = acc[C_VSUM, li] + acc[C_VSUM + 1, li]
        vcount[li] = acc[C_VCOUNT, li]
        lag_time[li] = lags[li] * dt
    if nl >= 1:
        mm = 0.0
        for k in range(nl):
            mm += msd[k]
        mm /= nl
        out[O_MSD_MEAN] = mm
        out[O_MSD_FINAL] = msd[nl - 1]
        if nl >= 2:
            var = 0.0
            for k in range(nl):
                var += (msd[k] - mm) ** 2
            out[O_MSD_STD] = math.sqrt(var / nl)
            out[O_MSD_SLOPE] = _slope(lag_time, msd, nl)

    # VACF(lag) / VACF(0), over the origins where both frames have velocities
    if nv > 0 and c0 > 0.0:
        c0 /= nv
        vlag = work[6]
        vval = work[7]
        nc = 0
        for li in range(nl):
            if vcount[li] > 0.0:
                vlag[nc] = lags[li]
                vval[nc] = vsum[li] / vcount[li] / c0
                nc += 1
        if nc > 0 and vlag[0] == 1.0:
            out[O_VACF_DECAY] = 1.0 - vval[0]
        out[O_VACF_ZERO] = _zero_crossing(vlag, vval, nc) * dt

    # energy per atom
    if ne > 0:
        out[O_E_MEAN] = g[AG_EE]
        out[O_E_STD] = math.sqrt(g[AG_EEE] / ne)
        out[O_E_TREND] = g[AG_ETE] / g[AG_ETT] if ne >= 2 and g[AG_ETT] > 0.0 else np.nan

    # structure
    if dmin < np.inf:
        out[O_MIN_DIST] = dmin
    # g(r): the window's pair counts over what an ideal gas would give the same centres
    norm = g[AG_RDF]
    if norm > 0.0:
        gr = rdf_ring[W + 1]
        bins = gr.shape[0]
        dr = fbuf[F_RDF_CUTOFF] / bins
        for b in range(bins):
            shell = 4.0 / 3.0 * math.pi * ((b + 1) ** 3 - b**3) * dr**3
            gr[b] = rdf_ring[W, b] / (norm * shell)
        peak = work[8]
        _first_peak(gr, dr, peak)
        out[O_RDF_POS] = peak[0]
        out[O_RDF_HEIGHT] = peak[1]


drop_stale_cache(
    globals(), ("_borrow.py", "features/_kernels.py", "features/_kernels_neighbors.py")
)
