"""atheris (libFuzzer) harness for the xyz/extxyz reader: only XYZFormatError may escape.

Each input is read as a whole file, strictly and then with ``skip_bad=True`` (which must
never raise). Seed it with real files for a head start:

    mkdir -p fuzz/corpus/xyz && cp tests/data/*.xyz fuzz/corpus/xyz/
    python fuzz/fuzz_xyz.py -max_total_time=60 -rss_limit_mb=2048 fuzz/corpus/xyz

Any other exception, a crash, a hang (``-timeout``, seconds) or more than
``-rss_limit_mb`` of memory is a finding (``crash-*``, ``timeout-*``, ``oom-*``).
"""

from __future__ import annotations

import io
import sys

import atheris
import numpy as np

# Numba compiles the parsing kernels from their bytecode, which atheris's instrumentation
# would rewrite: import them first, so that only the Python around them is instrumented.
from trajwatch.replay import _parse  # noqa: F401

with atheris.instrument_imports():
    from trajwatch.replay.xyz import XYZFormatError, XYZReader


def TestOneInput(data: bytes) -> None:  # noqa: N802 (the name atheris expects)
    try:
        with XYZReader(io.BytesIO(data)) as reader:
            for frame in reader:
                assert frame.positions.shape == (frame.n_atoms, 3)
    except XYZFormatError as error:
        assert error.line >= 1 and error.reason
    with XYZReader(io.BytesIO(data), skip_bad=True) as reader:
        for frame in reader:
            numbers = frame.numbers
            assert numbers.size == 0 or 0 <= int(np.min(numbers)) <= int(np.max(numbers)) <= 118
        assert reader.bad_frames == len(reader.errors)


def main() -> None:
    from trajwatch.replay.xyz import warmup

    warmup()  # compile the Numba kernels before libFuzzer starts timing runs
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
