"""The one place that knows where a :class:`~trajwatch.pipeline.SourceWatch` keeps the
numbers the monitor shows: the fused score, its threshold, the alarm state, and the
features behind the sparklines.

When the pipeline's internals change, this module changes; the state, the view and the
reports only see :class:`Reading`.

>>> from trajwatch.simulate import MDSpec, run_md
>>> from trajwatch.pipeline import Pipeline
>>> pipeline = Pipeline()
>>> for frame in run_md(MDSpec(steps=3, repeat=2, source="cu")):
...     _ = pipeline.process(frame)
>>> watch = pipeline.sources["cu"]
>>> reading = Probe(watch).read(watch)
>>> reading.alarm, reading.warming_up, [q.key for q in QUANTITIES]
(False, True, ['temperature', 'energy', 'min_dist', 'max_disp'])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["QUANTITIES", "Probe", "Quantity", "Reading"]


@dataclass(frozen=True)
class Quantity:
    """A per-frame number the monitor plots, found under the first feature name present."""

    key: str
    label: str
    unit: str
    features: tuple[str, ...]
    reduce: Literal["max", "min"] = "max"
    """How a sparkline bucket summarises its frames: the dips matter for a distance."""


QUANTITIES: tuple[Quantity, ...] = (
    Quantity("temperature", "T", "K", ("kinetic_temperature",)),
    Quantity("energy", "E/atom", "eV", ("energy_per_atom",)),
    Quantity("min_dist", "d_min", "Å", ("step_min_dist", "min_interatomic_dist"), "min"),
    Quantity("max_disp", "disp_max", "Å", ("step_disp_max", "disp_max")),
)


@dataclass(frozen=True)
class Reading:
    """What one source's detector state says after its latest frame."""

    score: float
    """The fused score of the latest frame (higher is more anomalous)."""
    threshold: float
    """Score above which an alarm starts."""
    alarm: bool
    """An alarm is on (it ends after the hysteresis' quiet frames)."""
    warming_up: bool
    """Still learning normal: no alarm can be raised yet."""
    warmup_frames: int
    values: tuple[float, ...]
    """The latest value of each of :data:`QUANTITIES` (NaN if unavailable)."""


class Probe:
    """Reads a SourceWatch; built once per source (feature indices are looked up once)."""

    def __init__(self, watch: Any) -> None:
        names = list(watch.engine.names)
        self.indices = tuple(
            next((names.index(f) for f in q.features if f in names), -1) for q in QUANTITIES
        )
        self.feature_names: tuple[str, ...] = tuple(names)

    def read(self, watch: Any) -> Reading:
        features = watch.last_features
        config = watch.config
        warmup = int(getattr(config, "warmup_frames", 0))
        return Reading(
            score=float(watch.last_score),
            threshold=float(config.threshold),
            alarm=bool(_alarm(watch).active),
            warming_up=watch.frames <= warmup,
            warmup_frames=warmup,
            values=tuple(math.nan if i < 0 else float(features[i]) for i in self.indices),
        )


def _alarm(watch: Any) -> Any:
    """The hysteresis switch: on the watch itself, or on its detector stack."""
    alarm = getattr(watch, "alarm", None)
    return alarm if alarm is not None else watch.stack.alarm
