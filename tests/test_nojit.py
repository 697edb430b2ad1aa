"""Run the kernel tests again with NUMBA_DISABLE_JIT=1: the pure-Python path must agree too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.slow
def test_kernel_tests_pass_without_jit() -> None:
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    # keep this run under ~60 s; the LAMMPS tests for its compiled callback, which
    # compiles even then (it runs without the GIL, so it has no Python fallback)
    patterns = (
        "test_kernels*.py", "test_features_engine*.py", "test_borrow.py", "test_adapters_lammps.py"
    )  # fmt: skip
    files = sorted(str(p) for pattern in patterns for p in HERE.glob(pattern))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert " passed" in result.stdout
