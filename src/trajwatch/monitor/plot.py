"""The ``scan --plot`` figure: fused score and the watched quantities over the frames,
with every alarm marked from its onset to its recovery.

Needs matplotlib (``pip install 'trajwatch[plot]'``); it draws with the Agg backend on
a figure of its own, so it never opens a window or touches pyplot's global state.

>>> import os, tempfile
>>> from trajwatch.simulate import MDSpec, run_md
>>> from trajwatch.pipeline import Pipeline
>>> from trajwatch.monitor.trace import Trace
>>> pipeline, trace = Pipeline(), Trace()
>>> for frame in run_md(MDSpec(steps=200, repeat=2, fault="clash", fault_frame=170, source="cu")):
...     events = pipeline.process(frame)
...     trace.record(frame, pipeline.sources[frame.source], events)
>>> path = save_plot(trace.sources["cu"], os.path.join(tempfile.mkdtemp(), "cu.png"))
>>> os.path.getsize(path) > 10_000
True
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np

from trajwatch.monitor.probe import QUANTITIES
from trajwatch.monitor.trace import SourceTrace

__all__ = ["matplotlib_missing", "save_plot"]

_SEVERITY_COLOUR = {"warning": "#e6a700", "high": "#e8590c", "critical": "#d62728"}


def matplotlib_missing() -> str | None:
    """None if matplotlib can be imported, else the message telling how to get it."""
    if importlib.util.find_spec("matplotlib") is None:
        return "--plot needs matplotlib: pip install 'trajwatch[plot]'"
    return None


def save_plot(trace: SourceTrace, path: str | Path, *, title: str | None = None) -> Path:
    """Draw ``trace`` to ``path`` (PNG, SVG or PDF, by its suffix); returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    frames = trace.frames
    panels = [("fused score", trace.score, "")]
    panels += [(q.label, trace.quantity(q.key), q.unit) for q in QUANTITIES]
    figure = Figure(figsize=(11, 1.7 * len(panels) + 0.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(panels), 1, sharex=True)
    spans = _alarm_spans(trace, int(frames[-1]) if frames.size else 0)
    for ax, (label, values, unit) in zip(axes, panels, strict=True):
        finite = np.isfinite(values)
        ax.plot(frames[finite], values[finite], lw=0.9, color="#1f77b4")
        bad = ~finite & ~np.isnan(values)
        if bad.any():  # infinities: a feature that blew up, drawn at the panel's top
            top = np.nanmax(values[finite]) if finite.any() else 1.0
            ax.plot(frames[bad], np.full(int(bad.sum()), top), "x", color="#d62728", ms=4)
        ax.set_ylabel(f"{label} ({unit})" if unit else label)
        ax.grid(alpha=0.25, lw=0.5)
        for start, end, onset, severity in spans:
            colour = _SEVERITY_COLOUR.get(severity, "#d62728")
            ax.axvspan(onset, end, color=colour, alpha=0.15, lw=0)
            ax.axvline(start, color=colour, lw=1.0)
        for event in trace.events:
            if event.event == "drift":
                ax.axvline(event.frame, color="#9467bd", lw=0.8, ls="--")
    score_ax = axes[0]
    if math.isfinite(trace.threshold):
        score_ax.axhline(trace.threshold, color="#d62728", lw=0.8, ls="--", label="threshold")
    score = trace.score[np.isfinite(trace.score)]
    if score.size and score.max() > 20 * max(trace.threshold, 1e-9):
        # linear up to the threshold, logarithmic above: quiet frames and a huge alarm both show
        linthresh = max(trace.threshold, 1e-3)
        score_ax.set_yscale("symlog", linthresh=linthresh)
        top = math.ceil(math.log10(float(score.max())))
        first = math.floor(math.log10(linthresh)) + 1
        score_ax.set_yticks([0.0, linthresh, *(10.0**k for k in range(first, top + 1))])
    if score.size and score.min() >= 0:
        score_ax.set_ylim(bottom=0)
    for start, _end, onset, severity in spans:
        score_ax.annotate(
            f"{severity} @ {start}" + (f" (onset {onset})" if onset != start else ""),
            xy=(start, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -3),
            textcoords="offset points",
            va="top",
            fontsize=8,
            color=_SEVERITY_COLOUR.get(severity, "#d62728"),
        )
    axes[-1].set_xlabel("frame")
    alarms = sum(1 for e in trace.events if e.event == "anomaly")
    heading = title or trace.source or "trajectory"
    figure.suptitle(f"{heading}: {frames.size} frames, {alarms} alarm{'s' * (alarms != 1)}")
    figure.savefig(path, dpi=110)
    return path


def _alarm_spans(trace: SourceTrace, last: int) -> list[tuple[int, int, int, str]]:
    """(alarm frame, end frame, onset frame, severity) of each anomaly."""
    spans = []
    open_alarm: tuple[int, int, str] | None = None
    for event in trace.events:
        if event.event == "anomaly":
            if open_alarm is not None:
                spans.append((open_alarm[0], event.frame, open_alarm[1], open_alarm[2]))
            onset = event.frame if event.onset_frame is None else event.onset_frame
            open_alarm = (event.frame, onset, event.severity)
        elif event.event == "recovered" and open_alarm is not None:
            spans.append((open_alarm[0], event.frame, open_alarm[1], open_alarm[2]))
            open_alarm = None
    if open_alarm is not None:
        spans.append((open_alarm[0], last, open_alarm[1], open_alarm[2]))
    return spans
