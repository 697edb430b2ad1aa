"""trajwatch.replay: archived trajectories in, frames out.

:mod:`trajwatch.replay.xyz` streams xyz/extxyz files (optionally gzip/bzip2/xz
compressed) as :class:`~trajwatch.frame.Frame` objects and writes frames back as extxyz.
"""

from trajwatch.replay.xyz import (
    XYZFormatError,
    XYZReader,
    XYZWriter,
    iread,
    warmup,
    write_extxyz,
)

__all__ = ["XYZFormatError", "XYZReader", "XYZWriter", "iread", "warmup", "write_extxyz"]
