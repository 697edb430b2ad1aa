"""atheris (libFuzzer) harness for the protocol v1 decoder: only ProtocolError may escape.

Coverage-guided, so it finds paths that hypothesis's random search needs luck for. The
input bytes are split into message parts; every fifth run starts from a valid message
with the input XORed over it, so the fuzzer spends its time past the magic check.

    python fuzz/fuzz_decode.py -max_total_time=60 -rss_limit_mb=2048 fuzz/corpus/decode

Any other exception, a crash or more than ``-rss_limit_mb`` of memory is a finding:
libFuzzer saves the input as ``crash-*``/``oom-*`` and prints it. ``tests/test_fuzz_atheris.py``
runs this for a few seconds in the test suite.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    import numpy as np

    from trajwatch.frame import Frame
    from trajwatch.streaming.protocol import ProtocolError, decode, encode

_VALID = [
    bytes(memoryview(p))
    for p in encode(
        Frame(np.ones((3, 3)), [8, 1, 1], velocities=np.zeros((3, 3)), energy=-1.0,
              cell=np.eye(3) * 5.0, time=2.0, step=7),
        topic="md",
        seq=3,
    )
]  # fmt: skip
_LIMITS = {"max_atoms": 1_000_000, "max_bytes": 64 << 20}


def parts_from(data: bytes) -> list[bytes]:
    fdp = atheris.FuzzedDataProvider(data)
    if fdp.ConsumeIntInRange(0, 4) == 0:
        # mutate a valid message: XOR the input over its bytes, cut or extend some parts
        parts = []
        for part in _VALID:
            mask = fdp.ConsumeBytes(len(part))
            mutated = bytes(a ^ b for a, b in zip(part, mask, strict=False)) + part[len(mask) :]
            cut = fdp.ConsumeIntInRange(0, len(mutated) + 8)
            parts.append(mutated[:cut] if cut <= len(mutated) else mutated + bytes(cut))
        return parts[: fdp.ConsumeIntInRange(0, 7)]
    count = fdp.ConsumeIntInRange(0, 8)
    parts = [fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 256)) for _ in range(count - 1)]
    if count:
        parts.append(fdp.ConsumeBytes(fdp.remaining_bytes()))
    return parts


def TestOneInput(data: bytes) -> None:  # noqa: N802 (the name atheris expects)
    parts = parts_from(data)
    try:
        frame = decode(parts, **_LIMITS)
    except ProtocolError:
        return
    n = frame.n_atoms
    assert frame.positions.shape == (n, 3) and frame.numbers.shape == (n,)
    assert frame.cell is None or bool(np.isfinite(frame.cell).all())


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
