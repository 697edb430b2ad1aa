"""A short soak: ``benchmarks/bench_soak.py`` with 20,000 frames (the full one sends 1M).

Real ``trajwatch replay`` and ``trajwatch monitor`` processes; every frame must arrive,
the monitor's memory stay flat and neither process gain descriptors, sockets or threads.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_soak.py"


def load_bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_soak", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_short_soak_is_lossless_flat_and_leak_free() -> None:
    result = load_bench().run(frames=20_000, interval=0.25)
    assert result["monitor_summary"]["frames"] == 20_000, result["monitor_line"]
    assert result["monitor_summary"]["lost"] == 0
    assert result["rss_growth_mb"] <= result["rss_budget_mb"]
    for name in ("monitor", "replay"):
        base, end = result[name]["baseline"], result[name]["end"]
        for what in ("fds", "sockets", "threads"):
            assert end[what] <= base[what], (name, what, base, end)
    assert result["pass"]
