"""The atheris harnesses in ``fuzz/`` run clean for a fixed number of inputs.

A short, seeded run: long runs are for ``python fuzz/fuzz_decode.py -max_total_time=600``
(see ``docs/reliability.md``). Skipped where atheris does not install.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris is not installed")

ROOT = Path(__file__).resolve().parents[1]


def run_harness(name: str, runs: int, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    result = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / name), f"-runs={runs}", "-seed=1",
         "-rss_limit_mb=2048", "-timeout=20", f"-artifact_prefix={tmp_path}/", str(corpus)],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip
    findings = [p.name for p in tmp_path.iterdir() if p.name.split("-")[0] in
                ("crash", "oom", "timeout", "leak")]  # fmt: skip
    assert result.returncode == 0 and not findings, result.stderr[-4000:]


@pytest.mark.slow
def test_decode_harness(tmp_path: Path) -> None:
    run_harness("fuzz_decode.py", 15_000, tmp_path)


@pytest.mark.slow
def test_xyz_harness(tmp_path: Path) -> None:
    pytest.importorskip("trajwatch.replay.xyz", reason="the xyz reader is not merged yet")
    run_harness("fuzz_xyz.py", 5_000, tmp_path)
