"""The seed study's batch pipeline, the baseline of the detection and headline benchmarks.

Not a benchmark itself (no ``run``): ``bench_detection.py`` and ``bench_headline.py``
import it. What the study did, after a run had finished:

1. cut the trajectory into windows of ``WINDOW`` (50) frames every ``STRIDE`` (10) frames;
2. compute the 27 window features of each window (``catalogue.WINDOW_FEATURES``);
3. standardise them on the reference windows and fit an Isolation Forest and a one-class
   SVM (RBF) on them, each told to expect a fraction ``CONTAMINATION`` of outliers;
4. flag a window when both models call it an outlier (the study's k-of-n vote, k = n = 2).

The window features are read off the incremental engine at each window's last frame:
the engine is held to the plain NumPy batch recompute to 1e-9 (``tests``), and the batch
recompute costs half a second per window at 100 atoms (``bench_features``), which would
make this benchmark minutes long without changing a single value.

The study's contamination is not recorded in this repository; 0.05 (5 %) is used, the
common choice, and in line with the 3.6 % the study reports on its reference run.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> model = StudyPipeline().fit(rng.normal(size=(300, 27)))
>>> flags = model.predict(np.vstack([rng.normal(size=(100, 27)), np.full((1, 27), 8.0)]))
>>> bool(flags[-1]), bool(flags[:100].mean() < 0.1)
(True, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from trajwatch.features.catalogue import WINDOW_FEATURES

__all__ = [
    "CONTAMINATION",
    "STRIDE",
    "WINDOW",
    "StudyPipeline",
    "available",
    "window_ends",
    "windows_of",
]

WINDOW = 50
STRIDE = 10
CONTAMINATION = 0.05


def available() -> bool:
    """Whether scikit-learn (the study's models) is installed; without it the benchmarks
    leave the study's pipeline out and say so."""
    import importlib.util

    return importlib.util.find_spec("sklearn") is not None


def window_ends(n_frames: int, start: int = 0) -> NDArray[np.intp]:
    """Index of the last frame of each window (the first window starts at ``start``)."""
    return np.arange(start + WINDOW - 1, n_frames, STRIDE, dtype=np.intp)


def windows_of(xs: NDArray[np.float64], names: Sequence[str], start: int = 0) -> NDArray[Any]:
    """The study's window matrix from per-frame engine vectors ``xs`` (frames x features,
    columns named ``names``): the 27 window features at every window's last frame."""
    columns = [list(names).index(n) for n in WINDOW_FEATURES]
    return np.asarray(xs[window_ends(len(xs), start)][:, columns], dtype=np.float64)


class StudyPipeline:
    """Standardise, Isolation Forest + one-class SVM, flag when both agree."""

    def __init__(self, contamination: float = CONTAMINATION, seed: int = 0) -> None:
        self.contamination = contamination
        self.seed = seed

    def fit(self, X: NDArray[np.float64]) -> StudyPipeline:
        """Fit on the reference windows (rows); columns never finite there are dropped,
        sporadic gaps filled with the column median."""
        from sklearn.ensemble import IsolationForest
        from sklearn.svm import OneClassSVM

        finite = np.isfinite(X)
        self.keep = finite.any(axis=0)
        X = X[:, self.keep]
        self.fill = np.nanmedian(np.where(np.isfinite(X), X, np.nan), axis=0)
        X = self._filled(X)
        self.mean = X.mean(axis=0)
        self.scale = X.std(axis=0)
        self.scale[self.scale == 0] = 1.0
        self.always_finite = finite[:, self.keep].all(axis=0)
        Z = (X - self.mean) / self.scale
        self.forest = IsolationForest(
            n_estimators=100, contamination=self.contamination, random_state=self.seed
        ).fit(Z)
        self.svm = OneClassSVM(kernel="rbf", gamma="scale", nu=self.contamination).fit(Z)
        return self

    def _filled(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.where(np.isfinite(X), X, self.fill)

    def predict(self, X: NDArray[np.float64]) -> NDArray[np.bool_]:
        """True for each window (row) both models call an outlier, or with a non-finite
        value in a feature that was finite in every reference window."""
        if len(X) == 0:
            return np.zeros(0, dtype=bool)
        X = X[:, self.keep]
        broken = (~np.isfinite(X) & self.always_finite).any(axis=1)
        Z = np.clip((self._filled(X) - self.mean) / self.scale, -1e6, 1e6)
        votes = (self.forest.predict(Z) == -1).astype(int) + (self.svm.predict(Z) == -1)
        return np.asarray(broken | (votes >= 2), dtype=bool)
