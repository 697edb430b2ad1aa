"""Regenerate examples/cu-clash.extxyz.gz: a real EMT run of fcc Cu with a clash at frame 120.

python scripts/make_sample.py
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
from pathlib import Path

from trajwatch.simulate import MDSpec, run_md, write_with_ase

OUT = Path(__file__).resolve().parent.parent / "examples" / "cu-clash.extxyz.gz"


def main() -> None:
    spec = MDSpec(element="Cu", repeat=2, steps=200, fault="clash", fault_frame=120, seed=3)
    with tempfile.TemporaryDirectory() as tmp:
        plain = write_with_ase(run_md(spec), Path(tmp) / "cu-clash.extxyz")
        with open(plain, "rb") as src, gzip.GzipFile(OUT, "wb", mtime=0) as dst:
            shutil.copyfileobj(src, dst)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
