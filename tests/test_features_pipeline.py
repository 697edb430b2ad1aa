"""The pipeline's use of the feature engine: structure changes and non-finite frames."""

from __future__ import annotations

import numpy as np

from trajwatch.frame import Frame
from trajwatch.pipeline import Pipeline, run
from trajwatch.simulate import MDSpec, run_md


def test_a_vanishing_atom_is_one_critical_event_and_the_source_starts_afresh(
    clean_frames: list[Frame],
) -> None:
    broken = [
        Frame(
            f.positions[:-1],
            f.numbers[:-1],
            velocities=f.velocities[:-1],  # type: ignore[index]
            energy=f.energy,
            cell=f.cell,
            step=f.step,
            time=f.time,
            source=f.source,
        )
        for f in clean_frames[100:200]
    ]
    pipeline = Pipeline()
    events = run([*clean_frames[:100], *broken], pipeline).events
    assert len(events) == 1, events
    event = events[0]
    assert (event.event, event.frame, event.severity, event.detector) == (
        "anomaly",
        100,
        "critical",
        "structure",
    )
    assert event.message == "atom count changed from 108 to 107 (Cu108 -> Cu107)"
    assert event.to_json()  # strict JSON: the infinite score is written as null
    watch = pipeline.sources["clean"]
    assert watch.stack.frames == 99  # frames 101..199: a new stack, warm-up started afresh
    assert watch.engine.structure_change is None


def test_nan_positions_raise_an_alarm_that_names_the_broken_atoms() -> None:
    frames = list(run_md(MDSpec(steps=70, repeat=2, fault="nan", fault_frame=60, seed=3)))
    events = run(frames, Pipeline()).events
    assert [(e.event, e.frame, e.severity) for e in events] == [("anomaly", 60, "critical")]
    assert events[0].features[0].name == "nonfinite_count"
    assert events[0].features[0].value == 3 * 32 + 1  # every coordinate and the energy
    assert events[0].atoms == [0, 1, 2, 3, 4]
    assert np.isnan(frames[-1].positions).all()
