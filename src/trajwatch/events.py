"""Events: what trajwatch says about a stream, one JSON object per line.

Every event names the frame (0-based index in its source's stream) at which it was
emitted, the detector, its score against its threshold and a severity. An anomaly adds
``onset_frame``, the features that deviate most and the atoms most responsible.

>>> e = Event("anomaly", frame=57, step=570, time=285.0, source="run1", detector="zscore",
...           score=41.2, threshold=6.0, severity="critical", onset_frame=56,
...           features=[FeatureDeviation("min_dist", 0.62, -38.5)], atoms=[3, 17])
>>> Event.from_json(e.to_json()) == e
True
>>> e.to_dict()["features"]
[{'name': 'min_dist', 'value': 0.62, 'deviation': -38.5}]
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EVENT_KINDS", "SEVERITIES", "Event", "FeatureDeviation", "severity_rank"]

EVENT_KINDS = ("anomaly", "drift", "recovered", "info", "stalled", "resumed")
"""``stalled``/``resumed``: a source went silent for longer than the stall timeout, and
came back (see ``docs/reliability.md``); they come from the monitor loop, not a detector."""
SEVERITIES = ("warning", "high", "critical")


def severity_rank(severity: str) -> int:
    """0 for warning, 1 for high, 2 for critical."""
    return SEVERITIES.index(severity)


@dataclass(frozen=True)
class FeatureDeviation:
    """One feature's value and how far it is from normal (in the detector's units)."""

    name: str
    value: float
    deviation: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": _finite(self.value),
            "deviation": _finite(self.deviation),
        }


@dataclass(frozen=True)
class Event:
    """One line of the event log; see ``docs/events.md`` for every field."""

    event: str
    frame: int
    step: int | None
    time: float | None
    source: str
    detector: str
    score: float
    threshold: float
    severity: str
    onset_frame: int | None = None
    features: list[FeatureDeviation] = field(default_factory=list)
    atoms: list[int] = field(default_factory=list)
    message: str = ""

    def __post_init__(self) -> None:
        if self.event not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {self.event!r}; expected one of {EVENT_KINDS}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}; expected one of {SEVERITIES}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "event": self.event,
            "frame": self.frame,
            "step": self.step,
            "time": _finite(self.time),
            "source": self.source,
            "detector": self.detector,
            "score": _finite(self.score),
            "threshold": _finite(self.threshold),
            "severity": self.severity,
        }
        if self.event == "anomaly" or self.onset_frame is not None:
            out["onset_frame"] = self.onset_frame
        if self.event == "anomaly" or self.features:
            out["features"] = [f.to_dict() for f in self.features]
        if self.event == "anomaly" or self.atoms:
            out["atoms"] = list(self.atoms)
        if self.message:
            out["message"] = self.message
        return out

    def to_json(self) -> str:
        """One line of strict JSON (non-finite numbers become null)."""
        return json.dumps(self.to_dict(), allow_nan=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        features = [
            FeatureDeviation(str(f["name"]), _num(f.get("value")), _num(f.get("deviation")))
            for f in data.get("features") or []
        ]
        return cls(
            event=data["event"],
            frame=int(data["frame"]),
            step=None if data.get("step") is None else int(data["step"]),
            time=None if data.get("time") is None else float(data["time"]),
            source=str(data.get("source", "")),
            detector=str(data.get("detector", "")),
            score=_num(data.get("score")),
            threshold=_num(data.get("threshold")),
            severity=data["severity"],
            onset_frame=None if data.get("onset_frame") is None else int(data["onset_frame"]),
            features=features,
            atoms=[int(a) for a in data.get("atoms") or []],
            message=str(data.get("message", "")),
        )

    @classmethod
    def from_json(cls, line: str) -> Event:
        return cls.from_dict(json.loads(line))


def _finite(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)
