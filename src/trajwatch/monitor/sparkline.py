"""Sparklines: a series of numbers as a line of block characters, as a rich ``Text``.

Values are bucketed to fit ``width`` characters; each bucket shows its largest value
(``reduce="max"``, so a one-frame spike stays visible) or its smallest (``"min"``, for a
quantity whose dips matter, such as the minimum interatomic distance). NaN is a blank;
infinity is a full block in the alarm colour. Values above ``threshold`` are drawn in
the alarm colour too.

>>> import numpy as np
>>> sparkline(np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]), width=8).plain
'▁▂▃▄▅▆▇█'
>>> sparkline(np.array([1.0, np.nan, 3.0]), width=3).plain
'▁ █'
>>> sparkline(np.array([]), width=4).plain
'    '
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import NDArray
from rich.text import Text

__all__ = ["BLOCKS", "bucket", "sparkline"]

BLOCKS = "▁▂▃▄▅▆▇█"


def bucket(
    values: NDArray[np.float64], width: int, reduce: Literal["max", "min"] = "max"
) -> NDArray[np.float64]:
    """``values`` shrunk to at most ``width`` points, newest last (NaN-aware).

    >>> bucket(np.array([1.0, 5.0, 2.0, 2.0]), 2).tolist()
    [5.0, 2.0]
    """
    n = values.size
    if n <= width:
        return values
    edges = np.linspace(0, n, width + 1).astype(np.intp)
    out = np.full(width, np.nan)
    pick = np.nanmax if reduce == "max" else np.nanmin
    for i in range(width):
        chunk = values[edges[i] : edges[i + 1]]
        if chunk.size and not np.isnan(chunk).all():
            out[i] = pick(chunk)
    return out


def sparkline(
    values: NDArray[np.float64],
    width: int = 40,
    *,
    reduce: Literal["max", "min"] = "max",
    threshold: float | None = None,
    lo: float | None = None,
    hi: float | None = None,
    style: str = "cyan",
    alarm_style: str = "bold red",
) -> Text:
    """The last ``width`` buckets of ``values`` as block characters, right-aligned.

    The scale runs from the smallest to the largest value shown; ``lo`` and ``hi`` widen
    it (e.g. ``lo=0, hi=threshold`` keeps a quiet score near the bottom).
    """
    points = bucket(values, width, reduce)
    text = Text(" " * (width - points.size))
    finite = points[np.isfinite(points)]
    bottom, top_value = (float(finite.min()), float(finite.max())) if finite.size else (0, 0)
    if lo is not None:
        bottom = min(bottom, lo)
    if hi is not None:
        top_value = max(top_value, hi)
    lo, span = bottom, top_value - bottom
    top = len(BLOCKS) - 1
    for value in points.tolist():
        if value != value:  # NaN: nothing to show
            text.append(" ")
            continue
        if value in (np.inf, -np.inf):
            text.append(BLOCKS[-1] if value > 0 else BLOCKS[0], alarm_style)
            continue
        level = round((value - lo) / span * top) if span > 0 else top // 2 if lo else 0
        over = threshold is not None and value > threshold
        text.append(BLOCKS[level], alarm_style if over else style)
    return text
