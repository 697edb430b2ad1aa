"""Frame owns its arrays and validates shapes; events keep the DESIGN contract."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from trajwatch.events import Event, FeatureDeviation
from trajwatch.frame import Frame, FrameError


def test_frame_copies_what_it_is_given() -> None:
    positions = np.zeros((3, 3))
    frame = Frame(positions, [1, 1, 8], velocities=np.ones((3, 3)), cell=np.eye(3) * 5)
    positions[0, 0] = 99.0
    assert frame.positions[0, 0] == 0.0
    assert frame.positions.flags.owndata and frame.positions.flags.writeable
    assert frame.numbers.dtype == np.int32
    assert frame.pbc.tolist() == [True, True, True]


def test_frame_copy_false_takes_fresh_arrays_as_they_are() -> None:
    positions = np.zeros((2, 3))
    frame = Frame(positions, np.array([1, 1], dtype=np.int32), copy=False)
    assert frame.positions is positions


def test_frame_copy_false_still_copies_views() -> None:
    block = np.zeros((2, 6))
    frame = Frame(block[:, :3], [1, 1], copy=False)
    block[0, 0] = 1.0
    assert frame.positions[0, 0] == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"positions": np.zeros((2, 2))}, "positions"),
        ({"numbers": [1]}, "numbers"),
        ({"velocities": np.zeros((3, 3))}, "velocities"),
        ({"cell": np.eye(2)}, "cell"),
        ({"cell": np.full((3, 3), np.nan)}, "non-finite"),
        ({"pbc": [True, False]}, "pbc"),
    ],
)
def test_frame_rejects_inconsistent_input(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"positions": np.zeros((2, 3)), "numbers": [1, 1]}
    args.update(kwargs)
    with pytest.raises(FrameError, match=message):
        Frame(**args)  # type: ignore[arg-type]


def test_anomaly_event_has_every_contract_field() -> None:
    event = Event(
        "anomaly", frame=3, step=30, time=None, source="s", detector="zscore", score=math.inf,
        threshold=8.0, severity="critical", onset_frame=2,
        features=[FeatureDeviation("disp_max", 1.5, math.nan)], atoms=[4],
    )  # fmt: skip
    data = json.loads(event.to_json())
    required = {
        "event",
        "frame",
        "step",
        "time",
        "source",
        "detector",
        "score",
        "threshold",
        "severity",
    }
    assert required | {"onset_frame", "features", "atoms"} <= data.keys()
    assert data["score"] is None and data["time"] is None  # strict JSON: no NaN/Infinity
    assert data["features"] == [{"name": "disp_max", "value": 1.5, "deviation": None}]


def test_event_rejects_unknown_kind_and_severity() -> None:
    with pytest.raises(ValueError, match="kind"):
        Event("alarm", 0, 0, None, "", "", 0.0, 0.0, "warning")
    with pytest.raises(ValueError, match="severity"):
        Event("anomaly", 0, 0, None, "", "", 0.0, 0.0, "fatal")
