"""The detector stack: detectors -> conformal calibration -> fusion -> alarm, plus drift.

Per frame (after ``warmup_frames`` frames that are only learned):

1. every detector scores the vector (before learning it: scores are out of sample);
2. each score becomes a surprise s = -log10 p against that detector's
   :class:`~trajwatch.detectors.threshold.Calibrator` (0 until it holds
   ``min_calibration`` scores);
3. the surprises are fused (:class:`~trajwatch.detectors.fusion.Fusion`, Cauchy by
   default, or k-of-n vote) and the fused surprise drives a
   :class:`~trajwatch.detectors.hysteresis.Hysteresis` (``threshold`` / ``release`` /
   ``release_frames``) and the onset :class:`~trajwatch.detectors.evidence.Cusum`;
4. the frame is learned (detectors and calibrators) only if it is below ``learn_below``
   and no alarm is on, and only while the stack is not frozen;
5. the z-scores of the first z-type detector feed the
   :class:`~trajwatch.detectors.drift.DriftWatch` (not during an alarm).

Two modes: *self-baseline* (a fresh stack learns normal from the start of the run) and
*reference* (:meth:`DetectorStack.fit` on a trusted run, :meth:`freeze`, then
:meth:`spawn` a judging copy per source; :func:`trajwatch.detectors.state.save` /
``load`` keep it on disk).

>>> import numpy as np
>>> stack = DetectorStack(StackConfig(detectors=("zscore", "robust")), n_features=3)
>>> rng = np.random.default_rng(0)
>>> steps = [stack.update(v) for v in rng.normal(size=(400, 3))]
>>> [s.change for s in steps if s.change]
[]
>>> step = stack.update(np.array([0.0, 50.0, 0.0]))
>>> step.change, stack.severity(step.surprise)
('start', 'critical')
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from trajwatch.detectors import _kernels
from trajwatch.detectors.base import Detector, State, as_vector, register
from trajwatch.detectors.drift import ADWIN, Change, DriftWatch, PageHinkley
from trajwatch.detectors.evidence import Cusum
from trajwatch.detectors.fusion import Fusion
from trajwatch.detectors.hst import HalfSpaceTrees
from trajwatch.detectors.hysteresis import Hysteresis
from trajwatch.detectors.loda import LODA
from trajwatch.detectors.robust_zscore import RobustZScore
from trajwatch.detectors.state import from_tree
from trajwatch.detectors.threshold import Calibrator
from trajwatch.detectors.zscore import ZScore

__all__ = ["DETECTORS", "DetectorStack", "StackConfig", "Step", "make_detector", "warmup"]

_FUSION_CODES = {
    "cauchy": _kernels.FUSION_CAUCHY,
    "min": _kernels.FUSION_MIN,
    "vote": _kernels.FUSION_VOTE,
}
_Change = Literal["start", "end", "escalate"]
_CHANGES: tuple[_Change | None, ...] = (None, "start", "end", "escalate")
_EMPTY = np.zeros(0)
_RT_FUSED = _kernels.RT_FUSED
_stack_frame = _kernels._stack_frame
_NO_TAIL = (np.zeros((0, 1)), np.zeros((0, 1)), np.zeros((0, 2)))


def _river_hst(seed: int) -> Detector:
    from river import anomaly

    from trajwatch.detectors.river_adapter import RiverDetector

    return RiverDetector(anomaly.HalfSpaceTrees(seed=seed))


def _river_svm(seed: int) -> Detector:
    from river import anomaly

    from trajwatch.detectors.river_adapter import RiverDetector

    return RiverDetector(anomaly.OneClassSVM())


DETECTORS: dict[str, Callable[[int], Detector]] = {
    "zscore": lambda seed: ZScore(tail=256),
    "robust": lambda seed: RobustZScore(),
    "hst": lambda seed: HalfSpaceTrees(seed=seed),
    "loda": lambda seed: LODA(seed=seed),
    "river-hst": _river_hst,
    "river-svm": _river_svm,
}
"""Detector names usable in :attr:`StackConfig.detectors`."""


def make_detector(name: str, seed: int = 0) -> Detector:
    try:
        return DETECTORS[name](seed)
    except KeyError:
        raise ValueError(
            f"unknown detector {name!r}; expected one of {sorted(DETECTORS)}"
        ) from None


@dataclass(frozen=True)
class StackConfig:
    """Knobs of the detector stack (see ``docs/detection.md``)."""

    detectors: tuple[str, ...] = ("zscore", "robust")
    fusion: str = "cauchy"
    """``cauchy`` (default), ``min``, ``fisher`` or ``vote`` (k-of-n)."""
    vote_k: int = 2
    warmup_frames: int = 50
    """Frames learned from the start of each source before any alarm can be raised (in
    the second half, their scores also start filling the calibrators)."""
    threshold: float = 8.0
    """Fused surprise -log10 p above which an alarm starts."""
    release: float = 2.0
    """Fused surprise at or below which a frame counts as normal again."""
    release_frames: int = 10
    """Consecutive normal frames that end an alarm (and emit ``recovered``)."""
    learn_below: float = 3.0
    """Only frames with a fused surprise below this (p > 0.001) are learned, so the
    detectors do not follow a fault that builds up slowly."""
    high: float = 12.0
    """Fused surprise from which an alarm is ``high`` (below: ``warning``)."""
    critical: float = 20.0
    """Fused surprise from which an alarm is ``critical`` (any non-finite feature is)."""
    calibration: int = 1000
    """Scores of normal frames kept per detector for its p-values."""
    min_calibration: int = 20
    """A detector joins the fusion once its calibrator holds this many scores."""
    settle_calibration: int = 200
    """Until the first detector's calibrator holds this many scores, an alarm needs the
    ``critical`` level: a young calibration set makes rough p-values."""
    cusum_reference: float = 1.0
    drift: bool = True
    drift_block: int = 25
    drift_threshold: float = 10.0
    drift_delta: float = 0.25
    adwin_delta: float = 1e-3
    drift_cooldown: int = 1000
    drift_features: tuple[int, ...] | None = None
    """Indices of the features drift detection watches (None: all)."""
    seed: int = 0

    def __post_init__(self) -> None:
        for name in self.detectors:
            if name not in DETECTORS:
                raise ValueError(f"unknown detector {name!r}; expected one of {sorted(DETECTORS)}")
        if not self.detectors:
            raise ValueError("the stack needs at least one detector")
        if not self.release < self.threshold <= self.high <= self.critical:
            raise ValueError("need release < threshold <= high <= critical")


@dataclass(slots=True)
class Step:
    """What the stack made of one frame."""

    index: int
    surprise: float
    """Fused -log10 p (0 during warm-up)."""
    surprises: NDArray[np.float64]
    """Per-detector -log10 p, in the order of ``StackConfig.detectors``."""
    change: Literal["start", "end", "escalate"] | None = None
    """``start``/``end`` of an alarm, or ``escalate``: an alarm raised below ``critical``
    turned critical (a second, worse fault during the first)."""
    onset: int | None = None
    drift: list[Change] = field(default_factory=list)


@register
class DetectorStack:
    """Detectors, calibrators, fusion, hysteresis, onset and drift for one stream."""

    def __init__(
        self, config: StackConfig | None = None, *, n_features: int | None = None
    ) -> None:
        self.config = config = config or StackConfig()
        self._warm = config.warmup_frames
        self.n_features = n_features
        self.names = config.detectors
        self.detectors: list[Any] = [
            make_detector(name, config.seed + i) for i, name in enumerate(config.detectors)
        ]
        self.calibrators = [Calibrator(config.calibration) for _ in self.detectors]
        self._bind()
        self.fusion = Fusion(
            config.fusion, n=len(self.detectors), k=min(config.vote_k, len(self.detectors))
        )
        self.frozen = False
        self.meta: dict[str, Any] = {}
        """Free-form JSON facts saved with the model (feature names, engine settings)."""
        self._explainer = next(
            (d for d in self.detectors if isinstance(d, (ZScore, RobustZScore))), None
        )
        self.reset_stream()

    def reset_stream(self) -> None:
        """Forget the per-stream runtime (frame count, alarm, onset, drift), keep the model."""
        c = self.config
        self.frames = 0
        self.alarm = Hysteresis(c.threshold, c.release, c.release_frames)
        self.cusum = Cusum(c.cusum_reference)
        self._alarm_critical = False
        self._rt[_kernels.RT_CRITICAL] = 0.0
        self.drift = (
            DriftWatch(
                block=c.drift_block,
                cooldown=c.drift_cooldown,
                page_hinkley=PageHinkley(delta=c.drift_delta, threshold=c.drift_threshold),
                adwin=ADWIN(delta=c.adwin_delta),
                features=c.drift_features,
            )
            if c.drift
            else None
        )
        self.last_surprise = 0.0
        self.last_onset: int | None = None
        """Onset frame of the alarm that started or escalated at the latest frame."""
        self.last_drift: Sequence[Change] = ()
        """Drift found at the latest frame (usually none)."""

    # The per-stream runtime is public (a caller may hand a stack another's); the fused
    # kernel's arguments are cached, so replacing one of these drops the cache.

    @property
    def alarm(self) -> Hysteresis:
        """The alarm switch (hysteresis) of this stream."""
        return self._alarm

    @alarm.setter
    def alarm(self, value: Hysteresis) -> None:
        self._alarm = value
        self._args: tuple[Any, ...] | None = None

    @property
    def cusum(self) -> Cusum:
        """The onset CUSUM of this stream."""
        return self._cusum

    @cusum.setter
    def cusum(self, value: Cusum) -> None:
        self._cusum = value
        self._args = None

    @property
    def drift(self) -> DriftWatch | None:
        """Drift detection of this stream (None when off)."""
        return self._drift

    @drift.setter
    def drift(self, value: DriftWatch | None) -> None:
        self._drift = value
        self._args = None

    # ------------------------------------------------------------------ per frame

    def _bind(self) -> None:
        """Gather the calibrators' arrays into stacked arrays (each calibrator keeps
        views), so one kernel call serves all detectors; pick unchecked fast paths."""
        cals = self.calibrators
        self._rings = np.stack([c.ring for c in cals])
        self._states = np.stack([c.state for c in cals])
        self._tails = np.stack([c.tail for c in cals])
        for j, c in enumerate(cals):
            c.ring, c.state, c.tail = self._rings[j], self._states[j], self._tails[j]
        self._ready = np.array([bool(d.ready) for d in self.detectors], dtype=np.bool_)
        self._all_ready = bool(self._ready.all())
        # Per-frame scalars in one vector (the fused kernel's ``rt``, see _kernels):
        # scores and surprises are views of it.
        n = len(self.detectors)
        self._rt = np.zeros(_kernels.RT_DET + 4 * n)
        self._scores = self._rt[_kernels.RT_DET + n : _kernels.RT_DET + 2 * n]
        self._surprises = self._rt[_kernels.RT_DET + 2 * n : _kernels.RT_DET + 3 * n]
        self._fast = False
        self._args = None
        self._fused: tuple[Any, ...] | None = None
        self._externals: list[tuple[int, Any]] = []

    def _go_fast(self, size: int) -> None:
        # Detectors have allocated for ``size`` features: from now on the stack checks
        # the vector once and calls their unchecked methods, or one fused kernel.
        self.n_features = size
        self._score_fns = [getattr(d, "_score", d.score_one) for d in self.detectors]
        # Detectors that keep the z of the vector they just scored learn it without
        # computing it again.
        self._learn_fns = [
            getattr(d, "_learn_scored", getattr(d, "_learn", d.learn_one)) for d in self.detectors
        ]
        self._cauchy = self.fusion.method == "cauchy"
        self._fused = self._fuse() if self.fused else None
        self._args = None
        self._fast = True

    fused = True
    """Run a stack of z-type detectors as one kernel call per frame (same results as the
    general path; False forces the general path, for comparison)."""

    def _fuse(self) -> tuple[Any, ...] | None:
        """Parameters and detector arrays of :func:`_kernels._stack_frame`, or None when
        this stack is not one it covers (at most one ZScore and one RobustZScore without
        tail scale, at least one of them, and any external slots such as the LSTM's;
        Cauchy, min or vote fusion)."""
        from trajwatch.detectors.external import ExternalScore  # (it imports this module)

        k = _kernels
        kinds = [type(d) for d in self.detectors]
        if (
            self.fusion.method not in _FUSION_CODES
            or any(t not in (ZScore, RobustZScore, ExternalScore) for t in kinds)
            or kinds.count(ZScore) > 1
            or kinds.count(RobustZScore) > 1
            or self._explainer is None
        ):
            return None
        zs = next((d for d in self.detectors if type(d) is ZScore), None)
        rz = next((d for d in self.detectors if type(d) is RobustZScore), None)
        if rz is not None and rz.tail is not None:
            return None
        self._externals = [
            (j, d) for j, d in enumerate(self.detectors) if type(d) is ExternalScore
        ]
        c = self.config
        n = len(self.detectors)
        p = np.zeros(k.P_KIND + 2 * n)
        p[k.P_THRESHOLD] = c.threshold
        p[k.P_RELEASE] = c.release
        p[k.P_RELEASE_FRAMES] = c.release_frames
        p[k.P_LEARN_BELOW] = c.learn_below
        p[k.P_CRITICAL] = c.critical
        p[k.P_SETTLE] = c.settle_calibration
        p[k.P_MIN_CAL] = c.min_calibration
        p[k.P_FROZEN] = float(self.frozen)
        p[k.P_FUSION] = _FUSION_CODES[self.fusion.method]
        p[k.P_VOTE_K] = self.fusion.k
        p[k.P_CUSUM_REF] = self.cusum.reference
        p[k.P_CUSUM_CAP] = self.cusum.cap
        p[k.P_N] = n
        kind = {ZScore: k.KIND_ZSCORE, RobustZScore: k.KIND_ROBUST, ExternalScore: k.KIND_EXTERNAL}
        p[k.P_KIND : k.P_KIND + n] = [kind[t] for t in kinds]
        p[k.P_EXPLAINER] = kind[type(self._explainer)]
        p[k.P_KIND + n : k.P_KIND + 2 * n] = self.fusion.weights
        if zs is not None:
            tail = zs.tail
            p[k.P_Z_REL], p[k.P_Z_ABS], p[k.P_Z_STREAK] = (
                zs.rel_floor,
                zs.abs_floor,
                float(zs.min_streak),
            )
            p[k.P_Z_Q] = 0.99 if tail is None else tail.q
            p[k.P_Z_REF] = 0.0 if tail is None else tail.reference
            p[k.P_Z_MIN_N] = 0 if tail is None else tail.min_n
            z_arrays = (zs.stats, zs.quantum, zs.z, *zs._tail_arrays)
        else:
            z_arrays = (np.zeros((4, 0)), np.zeros((0, 3)), np.zeros(0), *_NO_TAIL)
        if rz is not None:
            p[k.P_R_REL], p[k.P_R_ABS], p[k.P_R_STREAK] = (
                rz.rel_floor,
                rz.abs_floor,
                float(rz.min_streak),
            )
            p[k.P_R_REFRESH] = rz.refresh_per_frame
            r_arrays = (rz.ring, rz.sorted, rz.meta, rz.center, rz.spread, rz.quantum, rz.z)
        else:
            r_arrays = (
                np.zeros((0, 1)), np.zeros((0, 1)), np.zeros((1, 3)), np.zeros(0),
                np.zeros(0), np.zeros((0, 3)), np.zeros(0),
            )  # fmt: skip
        rt = self._rt
        rt[k.RT_DET : k.RT_DET + n] = self._ready
        rt[k.RT_ALL_READY] = float(self._all_ready)
        rt[k.RT_CRITICAL] = float(self._alarm_critical)
        return (p, rt, *z_arrays, *r_arrays, self._rings, self._states, self._tails)

    def update(self, x: NDArray[np.float64]) -> Step:
        """Score, judge and (if normal and not frozen) learn one feature vector.

        ``Step.surprises`` is a buffer the next call overwrites.
        """
        change = self.advance(x)
        return Step(
            self.frames - 1, self.last_surprise, self._surprises, change, self.last_onset,
            list(self.last_drift),
        )  # fmt: skip

    def advance(self, x: NDArray[np.float64]) -> Literal["start", "end", "escalate"] | None:
        """:meth:`update` without building a :class:`Step`: returns the alarm change and
        leaves the rest in :attr:`last_surprise`, :attr:`last_onset`, :attr:`last_drift`
        and :attr:`surprises`."""
        return self._advance(as_vector(x))

    def _advance(self, x: NDArray[np.float64]) -> Literal["start", "end", "escalate"] | None:
        """:meth:`advance` of a vector known to be 1-D, C-contiguous float64."""
        if self._args is not None and self.frames >= self._warm and x.size == self.n_features:
            # the usual frame: one kernel call, a few attribute stores
            return self._advance_fused(x, self._begin_fused())
        index = self.frames
        if self._fast and x.size != self.n_features:
            raise ValueError(f"expected {self.n_features} features, got {x.size}")
        self.frames += 1
        config = self.config
        self.last_onset = None
        self.last_drift = ()
        if index < config.warmup_frames:
            if not self.frozen:
                # Second half of the warm-up: score before learning, so the calibrators
                # are filling when alarms become possible.
                calibrate = index >= config.warmup_frames // 2
                for j, det in enumerate(self.detectors):
                    if calibrate and det.ready:
                        self.calibrators[j].add(det.score_one(x))
                    det.learn_one(x)
            self.cusum.update(index, 0.0)
            return None
        if not self._fast:
            for det in self.detectors:
                det.score_one(x)  # allocates for this size, learns nothing
            self._go_fast(x.size)
        if self._fused is not None:
            return self._advance_fused(x, index)
        return self._advance_general(x, index)

    @property
    def surprises(self) -> NDArray[np.float64]:
        """Per-detector surprise of the latest frame (a buffer the next frame overwrites)."""
        return self._surprises

    def _advance_fused(
        self, x: NDArray[np.float64], index: int
    ) -> Literal["start", "end", "escalate"] | None:
        args = self._args
        if args is None:
            args = self._args = self._fused_args(x.size)
        for j, slot in self._externals:  # scores set from outside (the LSTM's)
            self._scores[j] = slot.score_one(x)
        return self._end_fused(_stack_frame(x, index, *args))

    def _begin_fused(self) -> int:
        """A frame for the fused kernel (whoever calls it): its index, counted."""
        index = self.frames
        self.frames = index + 1
        self.last_onset = None
        self.last_drift = ()
        return index

    def _end_fused(self, status: int) -> Literal["start", "end", "escalate"] | None:
        """The fused kernel took a frame with ``status``: the surprise, the alarm change."""
        self.last_surprise = self._rt.item(_RT_FUSED)
        return self._fused_status(status) if status else None

    def _fused_status(self, status: int) -> Literal["start", "end", "escalate"] | None:
        """The alarm change of the fused kernel's status bits; onset and drift noted."""
        k = _kernels
        change = _CHANGES[status & k.CHANGE_MASK]
        if change is not None and change != "end":
            self.last_onset = int(self._rt[k.RT_ONSET])
        if status & k.DRIFT_FED:
            drift = self._drift
            assert drift is not None  # the kernel only feeds a drift watch that exists
            changes = drift._tick()
            if changes:
                self.last_drift = changes
        return change

    def _fused_args(self, size: int) -> tuple[Any, ...]:
        """All arguments of the fused kernel but the vector and its index."""
        assert self._fused is not None
        drift = self._drift
        if drift is None:
            return (self._alarm.state, self._cusum.state, _EMPTY, _EMPTY, 0.0, *self._fused)
        drift._ensure(size)
        return (
            self._alarm.state, self._cusum.state, drift._sum, drift._n, drift.clip,
            *self._fused,
        )  # fmt: skip

    def _advance_general(
        self, x: NDArray[np.float64], index: int
    ) -> Literal["start", "end", "escalate"] | None:
        config = self.config
        surprises = self._surprises
        scores = self._scores
        for j, score in enumerate(self._score_fns):
            scores[j] = score(x)
        _kernels._calib_surprise_all(
            scores, self._rings, self._states, self._tails, config.min_calibration, surprises
        )
        fused = (
            _kernels._cauchy_surprise(surprises, self.fusion.weights)
            if self._cauchy
            else self.fusion(surprises)
        )
        self.last_surprise = fused
        self.cusum.update(index, fused)
        alarm = self.alarm
        level = fused
        if (
            not alarm.active
            and level > config.threshold
            and level < config.critical
            and self._states[0, 0] < config.settle_calibration
        ):
            level = config.threshold  # not enough calibration yet for a mild alarm
        change: Literal["start", "end", "escalate"] | None = alarm.update(level)
        if change == "start":
            self._alarm_critical = fused >= config.critical
        elif alarm.active and not self._alarm_critical and fused >= config.critical:
            self._alarm_critical = True
            change = "escalate"
        if change in ("start", "escalate"):
            self.last_onset = self.cusum.onset(index) if change == "start" else index
        if not alarm.active:
            if not self.frozen:
                # Calibration takes every frame judged normal, its tail included (leaving
                # out the high ones would make p-values ever smaller); the detectors only
                # learn clearly normal frames, so they do not follow a slow fault.
                _kernels._calib_add_all(
                    scores, self._ready, self._rings, self._states, self._tails
                )
                if fused < config.learn_below:
                    for learn in self._learn_fns:
                        learn(x)
                    if not self._all_ready:  # readiness never goes back
                        for j, det in enumerate(self.detectors):
                            self._ready[j] = det.ready
                        self._all_ready = bool(self._ready.all())
            if self.drift is not None and self._explainer is not None:
                self.last_drift = self.drift.update(self._explainer.z)
        return change

    def deviations(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        """Signed z per feature from the stack's z-type detector (NaN if it has none)."""
        if self._explainer is None:
            return np.full(as_vector(x).size, math.nan)
        return np.asarray(self._explainer.deviations(as_vector(x)), dtype=np.float64)

    def severity(self, surprise: float, nonfinite: bool = False) -> str:
        if nonfinite or surprise >= self.config.critical:
            return "critical"
        return "high" if surprise >= self.config.high else "warning"

    # ------------------------------------------------------------------ reference mode

    def fit(self, vectors: Iterable[NDArray[np.float64]]) -> DetectorStack:
        """Learn normal from a trusted run (self-baseline over it); returns self."""
        for x in vectors:
            self.update(x)
        return self

    def freeze(self) -> DetectorStack:
        """Stop learning: detectors and calibrators keep what they know."""
        self.frozen = True
        self._fast = False  # the fused kernel's parameters are taken again
        self._args = None
        return self

    def spawn(self) -> DetectorStack:
        """An independent copy of the model with a fresh stream runtime (for one source)."""
        twin = DetectorStack.from_state(self.get_state())
        twin.reset_stream()
        return twin

    # ------------------------------------------------------------------ state

    def get_state(self) -> State:
        return {
            "type": type(self).__name__,
            "config": {
                **asdict(self.config),
                "detectors": list(self.config.detectors),
                "drift_features": None
                if self.config.drift_features is None
                else list(self.config.drift_features),
            },
            "n_features": self.n_features,
            "frozen": self.frozen,
            "frames": self.frames,
            "meta": self.meta,
            "detectors": [d.get_state() for d in self.detectors],
            "calibrators": [c.get_state() for c in self.calibrators],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> DetectorStack:
        known = {f.name for f in fields(StackConfig)}
        raw = {k: v for k, v in state["config"].items() if k in known}
        raw["detectors"] = tuple(raw["detectors"])
        if raw.get("drift_features") is not None:
            raw["drift_features"] = tuple(raw["drift_features"])
        stack = cls(StackConfig(**raw), n_features=state.get("n_features"))
        stack.detectors = [from_tree(d) for d in state["detectors"]]
        stack.calibrators = [Calibrator.from_state(c) for c in state["calibrators"]]
        stack._bind()
        stack._explainer = next(
            (d for d in stack.detectors if isinstance(d, (ZScore, RobustZScore))), None
        )
        stack.frozen = bool(state["frozen"])
        stack.meta = dict(state.get("meta") or {})
        stack.frames = int(state["frames"])
        return stack


def warmup() -> float:
    """Compile every detector kernel on tiny inputs before the first frame; returns s.

    Kernels are cached on disk (``cache=True``), so after the first process this only
    loads them.
    """
    import time

    start = time.perf_counter()
    rng = np.random.default_rng(0)
    detectors: list[Any] = [
        ZScore(),
        RobustZScore(window=8),
        HalfSpaceTrees(n_trees=2, height=3, window=4),
        LODA(n_projections=3, window=4),
    ]
    calibrator = Calibrator(16)
    fusion = Fusion("cauchy", n=len(detectors))
    drift = DriftWatch(block=1)
    surprises = np.zeros(len(detectors))
    for x in rng.normal(size=(40, 6)):
        for j, det in enumerate(detectors):
            score = det.score_one(x)
            det.learn_one(x)
            calibrator.add(score)
            surprises[j] = calibrator.surprise(score)
        fusion(surprises)
        drift.update(x)
    calibrator.quantile(0.5)
    # The default stack past its warm-up: the fused kernel (an alarm, its end, drift
    # blocks), and the general path's alarm switch and CUSUM.
    config = StackConfig(warmup_frames=4, min_calibration=2, calibration=16, drift_block=2)
    xs = rng.normal(size=(40, 6))
    xs[30] += 1e3
    for fused in (True, False):
        stack = DetectorStack(config)
        stack.fused = fused
        for x in xs:
            stack.advance(x)
    return time.perf_counter() - start
