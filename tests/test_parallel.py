"""``scan --jobs`` and ``scan --dask``: each file a task, the same outputs as the serial scan.

Real worker processes (the pool), a real Dask LocalCluster over tcp://127.0.0.1 (2 workers
x 1 thread), real files from EMT molecular dynamics.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trajwatch.cli import build_parser, main
from trajwatch.events import SEVERITIES, Event, FeatureDeviation
from trajwatch.parallel import ScanTask, TaskResult, _namespace, options_of
from trajwatch.simulate import MDSpec, run_md, write_with_ase


@pytest.fixture(scope="module")
def archive(
    clean_file: Path, clash_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> list[Path]:
    """Four trajectories: clean, a clash, a kick, and one that turns to NaN (null scores)."""
    where = tmp_path_factory.mktemp("archive")
    kick = MDSpec(steps=120, repeat=2, seed=21, fault="kick", fault_frame=80, source="kick")
    nan = MDSpec(steps=120, repeat=2, seed=22, fault="nan", fault_frame=90, source="nan")
    return [
        clean_file,
        write_with_ase(run_md(kick), where / "kick.extxyz"),
        clash_file,
        write_with_ase(run_md(nan), where / "nan.extxyz"),
    ]


def _scan(files: list[Path], out: Path, *extra: str) -> int:
    """Run ``trajwatch scan`` with every per-file output into ``out``/; the exit code."""
    out.mkdir()
    args = ["scan", *map(str, files), "--events", str(out / "events.jsonl"),
            "--features", str(out / "features.csv"), "--dump", str(out / "flagged"),
            "--context", "2", *extra]  # fmt: skip
    return main(args)


def _table(stderr: str) -> list[list[str]]:
    """The summary table's rows without the frames/s column (a speed, not a result)."""
    rows = [line.split() for line in stderr.splitlines() if re.match(r"\S+\.extxyz ", line)]
    return [row[:-1] for row in rows]


def _outputs(out: Path) -> dict[str, bytes]:
    files = [out / "events.jsonl", out / "features.csv", *sorted((out / "flagged").iterdir())]
    return {p.name: p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def serial(archive: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The reference: the same files scanned one after the other, in this process."""
    out = tmp_path_factory.mktemp("serial") / "out"
    code = _scan(archive, out, "--jobs", "1", "--quiet")
    assert code == 0
    yield out


def test_scan_with_a_process_pool_writes_what_the_serial_scan_writes(
    archive: list[Path], serial: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _scan(archive, tmp_path / "pool", "--jobs", "2")
    assert code == 0
    assert _outputs(tmp_path / "pool") == _outputs(serial)
    events = [json.loads(line) for line in (serial / "events.jsonl").read_text().splitlines()]
    # file order, then frame order; every fault caught
    assert [e["source"] for e in events if e["event"] == "anomaly"] == ["kick", "clash", "nan"]
    stderr = capsys.readouterr().err
    assert len(_table(stderr)) == 4 and "features:" in stderr and "flagged frames: 3" in stderr


def test_the_summary_table_is_the_serial_one(
    archive: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["scan", *map(str, archive), "--jobs", "1", "--events", str(tmp_path / "1")]) == 0
    one = _table(capsys.readouterr().err)
    assert main(["scan", *map(str, archive), "--jobs", "2", "--events", str(tmp_path / "2")]) == 0
    assert _table(capsys.readouterr().err) == one
    assert [row[0] for row in one] == [p.name for p in archive]


def test_scan_on_a_dask_cluster_writes_what_the_serial_scan_writes(
    archive: list[Path], serial: Path, tmp_path: Path
) -> None:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=False,
        protocol="tcp",
        host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:
        code = _scan(archive, tmp_path / "dask", "--dask", cluster.scheduler_address, "--quiet")
    assert code == 0
    assert _outputs(tmp_path / "dask") == _outputs(serial)


@pytest.mark.slow
def test_scan_dask_local_starts_its_own_cluster(
    archive: list[Path], serial: Path, tmp_path: Path
) -> None:
    code = _scan(archive, tmp_path / "local", "--dask", "local", "--jobs", "2", "--quiet")
    assert code == 0
    assert _outputs(tmp_path / "local") == _outputs(serial)


def test_plots_from_the_workers_have_the_serial_names(
    archive: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [str(p) for p in archive[:2]]
    assert main(["scan", *files, "--jobs", "2", "--plot", str(tmp_path / "run.png")]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["run-clean.png", "run-kick.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in tmp_path.glob("*.png"))
    assert capsys.readouterr().err.count("plot: ") == 2


def test_a_bad_file_stops_the_parallel_scan_where_the_serial_one_stops(
    archive: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.extxyz"
    text = archive[1].read_text().splitlines(keepends=True)
    bad.write_text("".join(text[: 34 * 100]) + "not a frame\n")  # 100 good frames, then junk
    files = [str(archive[1]), str(bad), str(archive[2])]
    logs = {}
    for jobs in ("1", "2"):
        log = tmp_path / f"events-{jobs}.jsonl"
        assert main(["scan", *files, "--jobs", jobs, "--events", str(log), "--quiet"]) == 1
        logs[jobs] = log.read_bytes()
        assert "bad.extxyz" in capsys.readouterr().err
    assert logs["1"] == logs["2"]
    sources = [json.loads(line)["source"] for line in logs["1"].splitlines()]
    assert "kick" in sources and "bad" in sources and "clash" not in sources


def test_a_reference_is_fitted_once_and_judges_every_file_as_in_the_serial_scan(
    archive: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [str(p) for p in archive[1:3]]
    logs = {}
    for jobs in ("1", "2"):
        log = tmp_path / f"events-{jobs}.jsonl"
        args = ["scan", *files, "--reference", str(archive[0]), "--jobs", jobs, "--quiet"]
        assert main([*args, "--events", str(log)]) == 0
        logs[jobs] = log.read_bytes()
        assert capsys.readouterr().err.count("fitted the reference") == 1
    assert logs["1"] == logs["2"]
    assert [json.loads(line)["source"] for line in logs["1"].splitlines()][:1] == ["kick"]


def test_jobs_must_be_positive(archive: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", *map(str, archive), "--jobs", "0"]) == 1
    assert "--jobs" in capsys.readouterr().err


def test_dask_missing_is_a_clear_error(archive: list[Path]) -> None:
    code = (
        "import sys; sys.modules['distributed'] = None; from trajwatch.cli import main; "
        f"sys.exit(main(['scan', {str(archive[0])!r}, '--dask', 'local']))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "pip install 'trajwatch[dask]'" in done.stderr


def test_a_task_is_plain_json_and_rebuilds_the_options() -> None:
    args = build_parser().parse_args(
        ["scan", "a.xyz", "--events", "e.jsonl", "--dump", "d", "--jobs", "3", "--skip-bad"]
    )
    task = ScanTask("a.xyz", options_of(args), skip_bad=True, dump="d").to_dict()
    assert json.loads(json.dumps(task)) == task
    again = vars(_namespace(ScanTask.from_dict(json.loads(json.dumps(task))).options))
    expected = {k: v for k, v in vars(args).items() if k not in ("files", "command")}
    assert again == expected


_floats = st.floats(allow_nan=True, allow_infinity=True)


@given(
    score=_floats,
    time=st.none() | _floats,
    value=_floats,
    severity=st.sampled_from(SEVERITIES),
    kind=st.sampled_from(["anomaly", "recovered", "drift"]),
)
def test_an_event_crosses_a_worker_boundary_to_the_same_json_line(
    score: float, time: float | None, value: float, severity: str, kind: str
) -> None:
    features = [FeatureDeviation("disp_max", value, -score)] if kind == "anomaly" else []
    event = Event(kind, 3, 30, time, "md", "zscore", score, 8.0, severity,
                  onset_frame=2 if kind == "anomaly" else None, features=features,
                  atoms=[1, 2] if kind == "anomaly" else [], message="m")  # fmt: skip
    result = TaskResult.from_dict(json.loads(json.dumps(_result_with(event))))
    assert [e.to_json() for e in result.report.events] == [event.to_json()]
    assert math.isnan(result.report.events[0].score) == (not math.isfinite(score))


def _result_with(event: Event) -> dict[str, object]:
    from trajwatch.monitor.scan import FileReport

    return TaskResult(FileReport(Path("x.xyz"), "x", frames=4, events=[event])).to_dict()
