"""Regenerate the monitor captures in docs/monitor.md: real EMT runs, the real view.

Two sources through one pipeline, as the monitor would see them from two engines: a clean
run, and one where an atom is pushed into its neighbour 30 frames before the end (so the
alarm is on). Frames are stamped as a publisher 25 frames/s away would stamp them.

python scripts/monitor_capture.py     # prints the text capture, writes docs/monitor.svg
"""

from __future__ import annotations

import io
import time
from pathlib import Path

from rich.console import Console

from trajwatch.frame import Frame
from trajwatch.monitor.render import render, render_summary
from trajwatch.monitor.state import MonitorState
from trajwatch.pipeline import Pipeline
from trajwatch.simulate import MDSpec, run_md

DOCS = Path(__file__).resolve().parent.parent / "docs"
WIDTH, HEIGHT = 104, 44


def main() -> None:
    pipeline = Pipeline()
    state = MonitorState(endpoint="tcp://127.0.0.1:5555")
    runs = [
        run_md(MDSpec(steps=240, seed=1, source="cu-npt-01")),
        run_md(MDSpec(steps=240, seed=2, fault="clash", fault_frame=210, source="cu-mlff-07")),
    ]
    start, wall = time.monotonic() - 9.6, time.time() - 9.6
    state.started = start - 3.0  # the monitor was up before the engines
    for i, frames in enumerate(zip(*runs, strict=True)):
        for k, frame in enumerate(frames):
            sent = wall + i / 25
            stamped = Frame(
                frame.positions, frame.numbers, velocities=frame.velocities,
                forces=frame.forces, energy=frame.energy, cell=frame.cell, pbc=frame.pbc,
                step=frame.step, time=frame.time, seq=frame.seq, source=frame.source,
                copy=False, wall_time=sent,
            )  # fmt: skip
            events = pipeline.process(stamped)
            watch = pipeline.sources[frame.source]
            latency = 0.0004 + 0.0002 * ((i * 7 + k) % 5)
            state.observe(stamped, watch, events, wall=sent + latency, now=start + i / 25)
    snapshot = state.snapshot(now=start + 240 / 25)
    console = Console(
        record=True, width=WIDTH, height=HEIGHT, color_system="truecolor", file=io.StringIO()
    )
    console.print(render(snapshot, width=WIDTH, height=HEIGHT))
    console.save_svg(str(DOCS / "monitor.svg"), title="trajwatch monitor", clear=False)
    print(console.export_text())
    state.finished = True
    summary = Console(record=True, width=WIDTH, file=io.StringIO())
    summary.print(render_summary(state.snapshot(now=start + 240 / 25)))
    print(summary.export_text())


if __name__ == "__main__":
    main()
