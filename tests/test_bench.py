"""``trajwatch bench``: finding the benchmarks, running them, the table and the JSON.

The real-output tests run the detector benchmark in quick mode once (a few seconds); the
others use tiny stand-in benchmark files. Nothing here checks a timing.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trajwatch import bench
from trajwatch.cli import main

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
COLUMNS = {"benchmark", "metric", "unit", "trajwatch", "baseline", "baseline_name", "ratio",
           "target", "pass", "note"}  # fmt: skip


def _strict(text: str) -> Any:
    """Parse JSON, refusing NaN and Infinity (not JSON, though Python writes them)."""

    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any], str]:
    """``trajwatch bench --quick --only detectors --json``: exit code, JSON, stdout."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("bench") / "nested" / "bench.json"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["bench", "--quick", "--only", "detectors", "--json", str(out)])
    return code, _strict(out.read_text()), stdout.getvalue()


@pytest.mark.slow
def test_quick_run_of_one_benchmark_writes_valid_json(
    real: tuple[int, dict[str, Any], str],
) -> None:
    code, document, _ = real
    assert code == 0
    assert document["format"] == "trajwatch-bench/1"
    assert document["quick"] is True
    assert list(document["benchmarks"]) == ["detectors"]
    entry = document["benchmarks"]["detectors"]
    assert entry["error"] is None
    assert entry["result"]["benchmark"] == "detectors"
    machine = document["machine"]
    for key in ("cpu", "cores", "load_average_start", "load_average_end", "python", "date"):
        assert machine[key]
    assert machine["versions"]["numpy"] and machine["versions"]["numba"]


@pytest.mark.slow
def test_rows_of_real_output_have_the_common_shape(real: tuple[int, dict[str, Any], str]) -> None:
    _, document, _ = real
    rows = document["rows"]
    assert rows, "the detector benchmark gives summary rows"
    for r in rows:
        assert set(r) == COLUMNS
        assert r["benchmark"] == "detectors"
        assert r["pass"] in (True, False, None)
        if r["ratio"] is not None:
            assert math.isclose(r["ratio"], r["trajwatch"] / r["baseline"])
    assert any(r["baseline_name"] == "River HST" for r in rows)
    assert any(r["target"] for r in rows)


@pytest.mark.slow
def test_table_of_real_output_lists_every_row(real: tuple[int, dict[str, Any], str]) -> None:
    _, document, stdout = real
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("benchmark"))
    for name in bench.COLUMNS:
        assert name in lines[header]
    body = [line for line in lines[header + 2 :] if line.startswith("detectors")]
    assert len(body) == len(document["rows"])
    for line, r in zip(body, document["rows"], strict=True):
        assert r["metric"] in line
        assert line.endswith({True: "pass", False: "FAIL", None: "-"}[r["pass"]])
    verdicts = [r["pass"] for r in document["rows"] if r["pass"] is not None]
    assert f"{sum(verdicts)} of {len(verdicts)} targets met" in stdout


def test_every_benchmark_is_found_in_run_order() -> None:
    found = bench.discover(bench.find_benchmarks())
    files = {p.stem.removeprefix("bench_") for p in BENCHMARKS.glob("bench_*.py")}
    assert set(found) == files
    ranked = [n for n in bench.ORDER if n in found]
    assert list(found)[: len(ranked)] == ranked
    assert {"reader", "transport", "features", "detectors", "e2e", "soak", "detection",
            "headline"} <= set(found)  # fmt: skip


def test_every_benchmark_exposes_run_and_summary() -> None:
    import ast

    for path in BENCHMARKS.glob("bench_*.py"):
        tree = ast.parse(path.read_text())
        functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert "run" in functions, path.name
        assert "summary" in functions, f"{path.name}: no summary(result) rows for the suite"


def _fake_suite(folder: Path) -> Path:
    folder.mkdir()
    (folder / "bench_good.py").write_text(
        "from trajwatch.bench import row\n"
        "def run(quick):\n"
        "    return {'quick': quick, 'value': float('nan'), 'rate': 2.0}\n"
        "def summary(result):\n"
        "    return [row('rate', result['rate'], baseline=4.0, baseline_name='them',\n"
        "                target='<= 3', ok=result['rate'] <= 3)]\n"
    )
    (folder / "bench_boom.py").write_text("def run(quick):\n    raise RuntimeError('broke')\n")
    (folder / "bench_plain.py").write_text(
        "def run(quick):\n    return {'checks': {'fast': True, 'small': False}}\n"
    )
    return folder


def test_a_failing_benchmark_is_reported_and_the_rest_still_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _fake_suite(tmp_path / "benchmarks")
    out = tmp_path / "out.json"
    assert main(["bench", "--quick", "--dir", str(folder), "--json", str(out)]) == 1
    stdout = capsys.readouterr().out
    assert "ERROR in boom: RuntimeError: broke" in stdout
    document = _strict(out.read_text())
    assert document["benchmarks"]["boom"]["error"] == "RuntimeError: broke"
    assert "Traceback" in document["benchmarks"]["boom"]["result"]["traceback"]
    good = document["benchmarks"]["good"]
    assert good["result"]["value"] is None  # NaN written as null: strict JSON
    assert good["rows"][0]["ratio"] == 0.5 and good["rows"][0]["pass"] is True
    plain = {r["metric"]: r["pass"] for r in document["benchmarks"]["plain"]["rows"]}
    assert plain == {"fast": True, "small": False}  # rows made from a result's checks
    assert "1 of 2 targets met" not in stdout and "2 of 3 targets met" in stdout


def test_only_runs_the_named_benchmarks(tmp_path: Path) -> None:
    folder = _fake_suite(tmp_path / "benchmarks")
    suite = bench.run_suite(folder, quick=True, only=["good"])
    assert [r.name for r in suite.runs] == ["good"]
    assert suite.rows[0]["benchmark"] == "good"
    assert not suite.failed


def test_unknown_benchmark_name_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _fake_suite(tmp_path / "benchmarks")
    assert main(["bench", "--dir", str(folder), "--only", "nope"]) == 1
    err = capsys.readouterr().err
    assert "unknown benchmark(s) nope" in err and "good" in err


def test_missing_benchmarks_directory_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--dir", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert "no benchmarks directory" in err and "--dir" in err


def test_list_names_the_benchmarks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("reader")
    assert "headline" in out


def test_table_formats_missing_and_large_values() -> None:
    rows = [
        {"benchmark": "x", **bench.row("frames", 123456.0, unit="frames/s")},
        {"benchmark": "x", **bench.row("tiny", 0.000123, baseline=0.5, baseline_name="b")},
    ]
    table = bench.format_table(rows).splitlines()
    assert "123,456" in table[2] and table[2].rstrip().endswith("-")
    assert "0.000123" in table[3] and "b 0.5 " in table[3] and "0.000246" in table[3]


def test_markdown_table_has_one_line_per_row(tmp_path: Path) -> None:
    folder = _fake_suite(tmp_path / "benchmarks")
    out = tmp_path / "table.md"
    assert main(["bench", "--dir", str(folder), "--only", "good", "plain",
                 "--markdown", str(out)]) == 0  # fmt: skip
    lines = out.read_text().splitlines()
    assert lines[0] == "| " + " | ".join(bench.COLUMNS) + " |"
    assert len(lines) == 2 + 3
    assert lines[2] == "| good | rate |  | 2.00 | them 4.00 | 0.5 | <= 3 | pass |"


def test_e2e_kernel_floor_does_the_same_work_as_the_pipeline() -> None:
    """The kernels-alone loop of ``bench_e2e`` (the floor its row reports) computes what
    ``Pipeline.process`` does: the same features and the same detector state."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_e2e
        import bench_features
    finally:
        sys.path.remove(str(BENCHMARKS))
    frames = list(bench_features.stream(bench_features.pool(100), 260))
    pipeline, by_pipeline = bench_e2e.warmed_zscore(frames[:200])
    for frame in frames[200:]:
        pipeline.process(frame)
    _, by_kernels = bench_e2e.warmed_zscore(frames[:200])
    args = bench_e2e.kernel_inputs(by_kernels, frames[200:])
    assert bench_e2e._kernels_only(*args) == 60
    np.testing.assert_array_equal(args[8], by_pipeline.last_features)
    for a, b in zip(by_kernels._stack._args, by_pipeline._stack._args, strict=True):
        np.testing.assert_array_equal(a, b)
    assert by_pipeline._stack.frames == 260  # the pipeline's stack did score those frames
