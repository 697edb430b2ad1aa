"""The feature catalogue: names, order, units and what each feature needs.

The order of :data:`FEATURE_NAMES` is the order of the vector that
:meth:`~trajwatch.features.engine.FeatureEngine.update` returns. Per-frame features come
first (they react to one bad frame), then the 27 window features of the AIMD/MLFF study.
Formulas are in ``docs/features.md``.

>>> FEATURE_NAMES[:3]
('step_disp_max', 'step_min_dist', 'kinetic_temperature')
>>> len(WINDOW_FEATURES), FEATURES["msd_slope"].unit
(27, 'Å²/fs')
>>> lag_set(50).tolist()
[1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 49]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "FEATURES",
    "FEATURE_NAMES",
    "FRAME_FEATURES",
    "WINDOW_FEATURES",
    "Feature",
    "lag_set",
]


@dataclass(frozen=True)
class Feature:
    """One entry of the catalogue."""

    name: str
    kind: str
    """``"frame"`` (this frame only) or ``"window"`` (the last W frames)."""
    unit: str
    needs: str
    """What must be present for the feature to be finite (else it is NaN)."""


_FRAME = (
    Feature("step_disp_max", "frame", "Å", "a previous frame"),
    Feature("step_min_dist", "frame", "Å", "2 atoms"),
    Feature("kinetic_temperature", "frame", "K", "velocities"),
    Feature("energy_per_atom", "frame", "eV/atom", "energy"),
    Feature("energy_drift", "frame", "eV/atom", "energy and velocities"),
    Feature("max_force", "frame", "eV/Å", "forces"),
    Feature("nonfinite_count", "frame", "count", "nothing"),
)

_WINDOW = (
    Feature("disp_mean", "window", "Å", "a previous frame"),
    Feature("disp_std", "window", "Å", "a previous frame"),
    Feature("disp_skew", "window", "1", "a previous frame, spread > 0"),
    Feature("disp_kurtosis", "window", "1", "a previous frame, spread > 0"),
    Feature("disp_max", "window", "Å", "a previous frame"),
    Feature("disp_median", "window", "Å", "a previous frame"),
    Feature("disp_p95", "window", "Å", "a previous frame"),
    Feature("rms_velocity", "window", "Å/fs", "velocities"),
    Feature("crest_factor", "window", "1", "a previous frame, motion"),
    Feature("impulse_factor", "window", "1", "a previous frame, motion"),
    Feature("frame_variance", "window", "Å²", "2 frames with displacements"),
    Feature("anisotropy", "window", "1", "a previous frame, motion"),
    Feature("dominant_freq", "window", "THz", "2 frames with displacements"),
    Feature("spectral_entropy", "window", "1", "2 frames with displacements"),
    Feature("spectral_peak_ratio", "window", "1", "2 frames with displacements"),
    Feature("msd_mean", "window", "Å²", "2 frames"),
    Feature("msd_std", "window", "Å²", "3 frames"),
    Feature("msd_final", "window", "Å²", "2 frames"),
    Feature("msd_slope", "window", "Å²/fs", "3 frames"),
    Feature("energy_mean", "window", "eV/atom", "energy"),
    Feature("energy_std", "window", "eV/atom", "energy"),
    Feature("energy_trend", "window", "eV/atom/fs", "energy in 2 frames"),
    Feature("min_interatomic_dist", "window", "Å", "2 atoms"),
    Feature("rdf_first_peak_pos", "window", "Å", "a periodic cell, 2 atoms"),
    Feature("rdf_first_peak_height", "window", "1", "a periodic cell, 2 atoms"),
    Feature("vacf_initial_decay", "window", "1", "velocities in 2 frames"),
    Feature("vacf_zero_crossing", "window", "fs", "velocities, a sign change"),
)

FRAME_FEATURES: tuple[str, ...] = tuple(f.name for f in _FRAME)
WINDOW_FEATURES: tuple[str, ...] = tuple(f.name for f in _WINDOW)
FEATURE_NAMES: tuple[str, ...] = FRAME_FEATURES + WINDOW_FEATURES
FEATURES: dict[str, Feature] = {f.name: f for f in _FRAME + _WINDOW}


def lag_set(window: int) -> NDArray[np.int64]:
    """Lags (in frames) at which MSD and VACF are kept: 2^k and 3·2^k below W, and W-1.

    Dense where the VACF decays and crosses zero, sparse where the MSD only needs its
    slope, so the per-frame cost is O(N log W) instead of O(N W).
    """
    lags: set[int] = set()
    k = 1
    while k < window:
        lags.add(k)
        if 3 * k // 2 < window and k >= 2:
            lags.add(3 * k // 2)
        k *= 2
    if window >= 2:
        lags.add(window - 1)
    return np.array(sorted(lags), dtype=np.int64)
