"""The publishing child process of the transport and end-to-end benchmarks.

Not a benchmark itself (the runner takes ``bench_*.py`` only). A benchmark re-runs its
own file with ``--serve``; the child reads one round per text line on stdin, prints the
endpoint it bound, publishes, and prints ``done``. One process serves every round
(starting Python costs seconds on a loaded machine) and nothing is pickled.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import trajwatch


def child_env() -> dict[str, str]:
    """This environment, with the trajwatch being measured first on ``PYTHONPATH``."""
    env = dict(os.environ)
    src = str(Path(trajwatch.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


class RoundServer:
    """``script --serve`` as a child process, driven a round at a time."""

    def __init__(self, script: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, script, "--serve"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=child_env(), text=True,
        )  # fmt: skip

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def start(self, line: str) -> str:
        """Ask for one round (``line``: the script's own words); the endpoint it binds."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        endpoint = self.proc.stdout.readline().strip()
        if not endpoint.startswith("tcp://"):
            raise RuntimeError("the publishing process did not start a round")
        return endpoint

    def finish(self) -> None:
        """Wait for the round to be sent in full."""
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "done":
            raise RuntimeError("the publishing process did not finish its round")

    def close(self, timeout: float = 60.0) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
