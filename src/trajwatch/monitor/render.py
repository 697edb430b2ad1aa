"""The live view and the end-of-run summary, as pure functions of a :class:`Snapshot`.

``render(snapshot, width=..., height=...)`` returns a rich renderable and does nothing
else, so the view can be drawn into any console, tested against a recorded console, or
not drawn at all; the loop that refreshes it lives in :mod:`trajwatch.monitor.live`.

>>> from rich.console import Console
>>> from trajwatch.monitor.state import MonitorState
>>> console = Console(record=True, width=100, color_system=None)
>>> console.print(render(MonitorState(endpoint="tcp://127.0.0.1:5555").snapshot()))
... # doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE
trajwatch monitor  tcp://127.0.0.1:5555  up 0:00:00  0 sources  0 frames  0 alarms ...
waiting for frames on tcp://127.0.0.1:5555 ...
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from trajwatch.events import Event
from trajwatch.monitor.sparkline import sparkline
from trajwatch.monitor.state import LoggedEvent, Series, Snapshot, SourceView

__all__ = [
    "STATUS_STYLE",
    "format_evidence",
    "format_latency",
    "render",
    "render_source",
    "render_summary",
]

STATUS_STYLE = {"OK": "bold green", "WARNING": "bold yellow", "ALARM": "bold white on red"}
SEVERITY_STYLE = {"warning": "yellow", "high": "bold dark_orange", "critical": "bold red"}
EVENT_STYLE = {"anomaly": "bold", "drift": "magenta", "recovered": "green", "info": "dim"}
_STATUS_ORDER = {"ALARM": 0, "WARNING": 1, "OK": 2}
_PANEL_LINES = 10  # border 2 + counters 1 + 5 sparklines + status 1 + evidence 1
SERIES_STYLE = {
    "score": "bright_cyan",
    "temperature": "dark_orange",
    "energy": "green",
    "min_dist": "medium_purple1",
    "max_disp": "dodger_blue1",
}
_LABEL = 9
_VALUE = 12
_RANGE = 21


def render(
    snapshot: Snapshot,
    *,
    width: int = 100,
    height: int | None = None,
    max_events: int = 8,
) -> RenderableType:
    """The whole live view: header, overview (several sources), source panels, events.

    With ``height``, panels and events are cut to fit (sources in alarm first).
    """
    parts: list[RenderableType] = [_header(snapshot)]
    if not snapshot.sources:
        waiting = f"waiting for frames on {snapshot.endpoint or 'the stream'} ..."
        parts.append(Text(waiting, style="dim"))
        parts.extend(_messages(snapshot))
        return Group(*parts)
    ordered = sorted(snapshot.sources, key=lambda s: (_STATUS_ORDER[s.status], s.name))
    used = 2  # header and footer
    if len(snapshot.sources) > 1:
        parts.append(_overview(snapshot.sources, width))
        used += len(snapshot.sources) + 2
    messages = _messages(snapshot)
    used += len(messages)
    n_events = min(max_events, len(snapshot.events))
    event_lines = n_events + 2 if n_events else 0
    if height is None:
        n_panels = min(len(ordered), 4)
    else:
        room = height - used - min(event_lines, 5)
        n_panels = max(0, min(len(ordered), room // _PANEL_LINES))
        n_events = max(0, min(n_events, height - used - n_panels * _PANEL_LINES - 2))
    parts.extend(render_source(view, width=width) for view in ordered[:n_panels])
    if n_events:
        parts.append(_event_table(snapshot.events[-n_events:], title="events", width=width))
    parts.extend(messages)
    if not snapshot.finished:
        parts.append(_footer(snapshot, n_panels))
    return Group(*parts)


def render_source(view: SourceView, *, width: int = 100) -> Panel:
    """One source: counters, five sparklines, and the evidence of its latest alarm."""
    spark_width = max(8, width - 4 - _LABEL - _VALUE - _RANGE - 3)
    grid = Table.grid(padding=(0, 1))
    grid.add_column(width=_LABEL, no_wrap=True)
    grid.add_column(width=spark_width, no_wrap=True)
    grid.add_column(width=_VALUE, justify="right", no_wrap=True)
    grid.add_column(width=_RANGE, no_wrap=True, style="dim")
    for series in view.series:
        grid.add_row(*_series_row(series, spark_width, view))
    lines: list[RenderableType] = [_counters(view), grid, *_status_lines(view)]
    title = Text.assemble(
        " ",
        (view.name or "(unnamed)", "bold"),
        " ",
        (f" {view.status} ", STATUS_STYLE[view.status]),
        " ",
    )
    border = {"OK": "green", "WARNING": "yellow", "ALARM": "red"}[view.status]
    return Panel(
        Group(*lines),
        title=title,
        title_align="left",
        border_style=border,
        box=box.ROUNDED,
        width=width,
    )


def render_summary(snapshot: Snapshot) -> RenderableType:
    """What the run saw, per source, and every anomaly with its evidence."""
    table = Table(
        title=f"{snapshot.title}: {snapshot.frames:,} frames in {_duration(snapshot.uptime)}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        show_edge=False,
    )
    for name, justify in (
        ("source", "left"),
        ("status", "left"),
        ("frames", "right"),
        ("frames/s", "right"),
        ("latency p50/p99", "right"),
        ("lost", "right"),
        ("alarms", "right"),
        ("first alarm", "right"),
        ("worst", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for view in snapshot.sources:
        table.add_row(
            view.name,
            Text(view.status, STATUS_STYLE[view.status]),
            f"{view.frames:,}",
            f"{view.frames / view.active:,.1f}" if view.active > 0 else "",
            _latency_pair(view),
            _count(view.lost),
            _count(view.alarms),
            "" if view.first_alarm is None else f"frame {view.first_alarm}",
            _severity(view.worst),
        )
    parts: list[RenderableType] = [table]
    anomalies = [e for e in snapshot.events if e.event.event != "info"]
    if anomalies:
        parts.append(_event_table(anomalies, title="events", width=None))
    footer = f"malformed messages {snapshot.malformed}, frames lost {snapshot.lost}"
    parts.append(Text(footer, style="dim"))
    return Group(*parts)


# -- pieces ---------------------------------------------------------------------------


def _header(snapshot: Snapshot) -> Text:
    text = Text()
    text.append(snapshot.title, "bold cyan")
    if snapshot.endpoint:
        text.append(f"  {snapshot.endpoint}", "cyan")
    n = len(snapshot.sources)
    alarms = snapshot.alarms
    text.append(f"  up {_duration(snapshot.uptime)}")
    text.append(f"  {n} source{'s' if n != 1 else ''}")
    text.append(f"  {snapshot.frames:,} frames")
    text.append(f"  {alarms} alarm{'s' if alarms != 1 else ''}", "bold red" if alarms else "")
    text.append(f"  malformed {snapshot.malformed}", "yellow" if snapshot.malformed else "dim")
    text.append(f"  lost {snapshot.lost}", "yellow" if snapshot.lost else "dim")
    if snapshot.finished:
        text.append("  finished", "bold")
    text.no_wrap = True
    text.overflow = "ellipsis"
    return text


def _footer(snapshot: Snapshot, shown: int) -> Text:
    text = Text("q or Ctrl-C quits", style="dim")
    hidden = len(snapshot.sources) - shown
    if hidden > 0:
        text.append(f" · {hidden} source panel{'s' if hidden != 1 else ''} hidden (no room)")
    return text


def _overview(sources: Sequence[SourceView], width: int) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    spark = max(8, min(40, width - 84))
    for name, justify in (
        ("source", "left"),
        ("status", "left"),
        ("frames", "right"),
        ("frames/s", "right"),
        ("latency ms", "right"),
        ("lost", "right"),
        ("score", "left"),
        ("alarms", "right"),
        ("first", "right"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for view in sources:
        score = view.series[0]
        table.add_row(
            view.name,
            Text(view.status, STATUS_STYLE[view.status]),
            f"{view.frames:,}",
            f"{view.fps:,.1f}",
            _latency_pair(view),
            _count(view.lost),
            sparkline(
                score.values,
                spark,
                threshold=score.threshold,
                lo=0.0,
                hi=score.threshold,
                style=SERIES_STYLE["score"],
            ),
            _count(view.alarms),
            "" if view.first_alarm is None else str(view.first_alarm),
        )
    return table


def _counters(view: SourceView) -> Text:
    text = Text()
    text.append(f"{view.frames:,}", "bold")
    text.append(" frames  ")
    text.append(f"{view.fps:,.1f}", "bold")
    text.append(" frames/s  latency ")
    text.append(_latency_pair(view), "bold")
    text.append(" ms p50/p99" if view.latency_p50 is not None else " (no send time)")
    text.append("  lost ")
    text.append(str(view.lost), "bold yellow" if view.lost else "bold")
    if view.restarts:
        text.append(f"  restarts {view.restarts}", "yellow")
    text.append(f"  {view.n_atoms:,} atoms  step {view.step:,}", "dim")
    if view.sim_time is not None:
        text.append(f"  t {_sim_time(view.sim_time)}", "dim")
    if view.idle >= 2.0:
        text.append(f"  idle {view.idle:.0f} s", "yellow")
    return text


def _series_row(series: Series, width: int, view: SourceView) -> tuple[Text, Text, Text, Text]:
    label = Text(series.label, style="bold" if series.key == "score" else "")
    threshold = series.threshold
    style = SERIES_STYLE.get(series.key, "cyan")
    if series.key == "score":
        # scaled from 0 to at least the threshold: a quiet score stays low, not noise
        line = sparkline(
            series.values, width, threshold=threshold, lo=0.0, hi=threshold, style=style
        )
    else:
        line = sparkline(series.values, width, reduce=series.reduce, style=style)
    last = series.last
    if series.key == "score":
        over = threshold is not None and last > threshold
        value = Text(_number(last), "bold red" if over else "bold")
        extra = Text("" if threshold is None else f"threshold {_number(threshold)}")
        if view.warming_up:
            extra = Text("learning normal", "dim italic")
        return label, line, value, extra
    unit = f" {series.unit}" if series.unit else ""
    value = Text(_number(last) + unit)
    finite = series.values[[math.isfinite(v) for v in series.values.tolist()]]
    extra = Text("n/a" if series.values.size and not finite.size else "")
    if finite.size:
        extra = Text(f"{_number(float(finite.min()))} – {_number(float(finite.max()))}")
    return label, line, value, extra


def _status_lines(view: SourceView) -> list[Text]:
    """The status in words; then the evidence of the alarm that is on (or was last)."""
    note = Text(no_wrap=True, overflow="ellipsis")
    marker, style = {
        "OK": ("●", "bold green"),
        "WARNING": ("▲", "bold yellow"),
        "ALARM": ("▲", "bold red"),
    }[view.status]
    note.append(f"{marker} ", style)
    note.append(view.note, style if view.status != "OK" else "")
    anomaly = view.last_anomaly
    if anomaly is None:
        return [note]
    if not view.alarm:
        note.append(f"   last alarm: frame {anomaly.frame}, {anomaly.severity}", "dim")
    evidence = Text(no_wrap=True, overflow="ellipsis")
    evidence.append("  evidence ", "dim")
    evidence.append(format_evidence(anomaly, features=2) or anomaly.message, "italic")
    return [note, evidence]


def _event_table(events: Sequence[LoggedEvent], *, title: str, width: int | None) -> Table:
    table = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        show_edge=False,
        width=width,
        expand=True,
    )
    table.add_column("time", style="dim", no_wrap=True)
    table.add_column("source", no_wrap=True)
    table.add_column("event", no_wrap=True)
    table.add_column("severity", no_wrap=True)
    table.add_column("frame", justify="right", no_wrap=True)
    table.add_column("onset", justify="right", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column(
        "evidence", overflow="ellipsis", no_wrap=width is not None, ratio=1 if width else None
    )
    for logged in events:
        e = logged.event
        table.add_row(
            time.strftime("%H:%M:%S", time.localtime(logged.wall)),
            e.source,
            Text(e.event, EVENT_STYLE.get(e.event, "")),
            _severity(e.severity) if e.event != "recovered" else Text(""),
            str(e.frame),
            "" if e.onset_frame is None else str(e.onset_frame),
            _number(e.score),
            format_evidence(e, features=1, atoms=3) or e.message,
        )
    return table


def _messages(snapshot: Snapshot) -> list[RenderableType]:
    return [Text(m, style="yellow", overflow="ellipsis", no_wrap=True) for m in snapshot.messages]


# -- formatting -----------------------------------------------------------------------


def format_evidence(event: Event, features: int = 3, atoms: int = 8) -> str:
    """``"disp_max 1.458 (z +1139), … · atoms 7 2 30"``: the event's evidence in one line.

    >>> from trajwatch.events import Event, FeatureDeviation
    >>> e = Event("anomaly", 5, 5, None, "a", "zscore", 9.0, 8.0, "warning",
    ...           features=[FeatureDeviation("min_dist", 0.62, -38.5)], atoms=[3, 17])
    >>> format_evidence(e)
    'min_dist 0.62 (z -38.5) · atoms 3 17'
    """
    parts = []
    for f in event.features[:features]:
        deviation = "" if math.isnan(f.deviation) else f" (z {_signed(f.deviation)})"
        parts.append(f"{f.name} {_number(f.value)}{deviation}")
    text = ", ".join(parts)
    if event.atoms:
        listed = " ".join(str(a) for a in event.atoms[:atoms])
        text = f"{text} · atoms {listed}" if text else f"atoms {listed}"
    return text


def format_latency(seconds: float | None) -> str:
    """Milliseconds with 2-3 significant digits; ``"-"`` when unknown.

    >>> format_latency(0.000412), format_latency(0.0123), format_latency(2.5), format_latency(None)
    ('0.41', '12.3', '2,500', '-')
    """
    if seconds is None or not math.isfinite(seconds):
        return "-"
    ms = seconds * 1e3
    if abs(ms) < 10:
        return f"{ms:.2f}"
    if abs(ms) < 100:
        return f"{ms:.1f}"
    return f"{ms:,.0f}"


def _latency_pair(view: SourceView) -> str:
    if view.latency_p50 is None:
        return "-"
    return f"{format_latency(view.latency_p50)}/{format_latency(view.latency_p99)}"


def _number(value: float) -> str:
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    magnitude = abs(value)
    if magnitude >= 1e5 or (0 < magnitude < 1e-3):
        return f"{value:.3g}"
    if magnitude >= 100:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def _signed(value: float) -> str:
    if math.isinf(value):
        return "+∞" if value > 0 else "-∞"
    return f"{value:+,.0f}" if abs(value) >= 100 else f"{value:+.3g}"


def _count(n: int) -> Text:
    return Text(f"{n:,}", "bold yellow" if n else "dim")


def _severity(severity: str | None) -> Text:
    if severity is None:
        return Text("")
    return Text(severity, SEVERITY_STYLE.get(severity, ""))


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _sim_time(fs: float) -> str:
    return f"{fs / 1000:,.3f} ps" if abs(fs) >= 1000 else f"{fs:,.1f} fs"
