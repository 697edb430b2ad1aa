"""``trajwatch demo``: a real ASE MD run with a fault injected, streamed to the monitor.

The engine runs in a background process (``python -m trajwatch.demo``, no pickling):
EMT copper at 300 K under a Langevin thermostat (:func:`trajwatch.simulate.run_md`),
published frame by frame over ZeroMQ at a watchable rate, with a fault injected into the
running simulation at a chosen or random frame. The monitor in the foreground is the
same code as ``trajwatch monitor``. Everything runs offline; ASE is needed (the ``md``
extra).

>>> spec = DemoSpec(fault="kick", seed=3)
>>> spec.fault_at() == DemoSpec(fault="kick", seed=3).fault_at(), 180 <= spec.fault_at() < 260
(True, True)
>>> engine_command(DemoSpec(fault="clash", at=200, frames=300))[-8:]
['--fault', 'clash', '--at', '200', '--frames', '300', '--rate', '20.0']
>>> DemoSpec(fault="clash", at=200).total_frames(), DemoSpec(fault="heat", at=200).total_frames()
(400, 420)
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

import numpy as np

from trajwatch.events import Event

__all__ = [
    "DEMO_FAULTS",
    "AlarmClock",
    "DemoSpec",
    "Engine",
    "ase_missing",
    "engine_command",
    "engine_main",
]

DEMO_FAULTS = ("clash", "kick", "heat", "dt")
"""The faults ``--fault`` offers (any of :data:`trajwatch.simulate.FAULTS` works)."""

_GRADUAL = ("heat", "thermostat", "degrade")  # faults that take time to build up
_EARLIEST, _LATEST = 180, 260  # random fault frames: after the detectors have calibrated


@dataclass(frozen=True)
class DemoSpec:
    """What the demo engine simulates and how fast it streams."""

    fault: str = "clash"
    at: int | None = None
    """Frame of the fault; None picks one at random (from ``seed``) in 180..259."""
    frames: int | None = None
    """Frames to run; None: 400, or for a gradual fault 220 after it (time to build up)."""
    rate: float = 20.0
    """Frames per second sent (the engine sends slower if it cannot keep up)."""
    size: int = 3
    """Supercell repeat: 4·size³ atoms of fcc Cu."""
    temperature: float = 300.0
    seed: int | None = None

    def total_frames(self, at: int | None = None) -> int:
        if self.frames is not None:
            return self.frames
        at = self.fault_at() if at is None else at
        return max(400, at + 220) if self.fault in _GRADUAL else 400

    def fault_at(self) -> int:
        if self.at is not None:
            return self.at
        rng = np.random.default_rng(self.seed)
        return int(rng.integers(_EARLIEST, _LATEST))

    @property
    def atoms(self) -> int:
        return 4 * self.size**3

    @property
    def source(self) -> str:
        return f"Cu{self.atoms}-{self.fault}"


def ase_missing() -> str | None:
    """None when ASE can be imported, else how to install it."""
    if importlib.util.find_spec("ase") is None:
        return "trajwatch demo runs a real MD engine and needs ASE: pip install 'trajwatch[md]'"
    return None


def engine_command(spec: DemoSpec, *, at: int | None = None) -> list[str]:
    """The command line that starts the demo engine in a fresh interpreter."""
    at = spec.fault_at() if at is None else at
    return [
        sys.executable, "-m", "trajwatch.demo",
        "--size", str(spec.size),
        "--temperature", str(spec.temperature),
        "--seed", str(0 if spec.seed is None else spec.seed),
        "--fault", spec.fault,
        "--at", str(at),
        "--frames", str(spec.total_frames(at)),
        "--rate", str(spec.rate),
    ]  # fmt: skip


class Engine:
    """The background MD process: :meth:`spawn` it, :meth:`wait_ready` for its endpoint.

    ``fault_at`` is the frame at which the fault goes in.
    """

    def __init__(
        self, process: subprocess.Popen[str], fault_at: int, stderr: IO[str] | None = None
    ) -> None:
        self.process = process
        self.fault_at = fault_at
        self.endpoint = ""
        self.errors = ""
        """The engine's stderr, once it has been stopped."""
        self._stderr = stderr
        self._exited_at: float | None = None

    @classmethod
    def spawn(cls, spec: DemoSpec) -> Engine:
        """Start the engine (it imports ASE and equilibrates while the caller gets ready)."""
        at = spec.fault_at()
        # a file, not a pipe: an engine that warns a lot must never block on a full pipe
        stderr = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115
        process = subprocess.Popen(
            engine_command(spec, at=at),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # Ctrl-C reaches the monitor, which then stops the engine
        )
        return cls(process, at, stderr)

    def wait_ready(self, timeout: float = 60.0) -> str:
        """Wait until the engine has bound its socket; its endpoint (OSError if it died)."""
        stdout = self.process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        line = ""
        while not line and time.monotonic() < deadline and self.process.poll() is None:
            ready, _, _ = select.select([stdout], [], [], 0.1)
            if ready:
                line = stdout.readline()
        if not line.startswith("endpoint "):
            self.stop()
            raise OSError(f"the demo engine did not start: {self.errors or 'no reply'}")
        self.endpoint = line.split()[1]
        return self.endpoint

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def exited_for(self) -> float:
        """Seconds since the engine was first seen to have exited (0 while it runs)."""
        if self.process.poll() is None:
            return 0.0
        now = time.monotonic()
        if self._exited_at is None:
            self._exited_at = now
        return now - self._exited_at

    def terminate(self) -> None:
        """Ask the engine to stop (SIGTERM): what a stop-on-alarm callback does."""
        if self.process.poll() is None:
            self.process.terminate()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the engine if it still runs, reap it and keep its stderr in ``errors``."""
        self.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        if self._stderr is not None and not self._stderr.closed:
            self._stderr.seek(0)
            self.errors = self._stderr.read().strip()[-4000:]
            self._stderr.close()


class AlarmClock:
    """A sink that notes the first anomaly or drift event: how fast the fault was caught.

    >>> from trajwatch.events import Event
    >>> clock = AlarmClock(fault_at=200)
    >>> clock.emit(Event("anomaly", 203, 203, 406.0, "cu", "zscore", 30.0, 8.0, "critical"))
    >>> clock.alarm.frame, clock.line(20.0).startswith("fault injected at frame 200")
    (203, True)
    """

    def __init__(self, fault_at: int) -> None:
        self.fault_at = fault_at
        self.started = time.monotonic()
        self.alarm: Event | None = None
        self.alarm_after = 0.0
        """Seconds from the start of the demo to the alarm."""

    def emit(self, event: Event) -> None:
        if event.event in ("anomaly", "drift") and self.alarm is None:
            self.alarm = event
            self.alarm_after = time.monotonic() - self.started

    def close(self) -> None:
        pass

    def line(self, total: float) -> str:
        """One line for the end of the demo."""
        head = f"fault injected at frame {self.fault_at}; "
        alarm = self.alarm
        if alarm is None:
            return head + f"no alarm raised; the demo took {total:.1f} s"
        lag = alarm.frame - self.fault_at
        when = f"{lag} frame{'s' * (abs(lag) != 1)} after the fault" if lag >= 0 else "before it"
        what = f"{alarm.severity} alarm" if alarm.event == "anomaly" else "drift warning"
        return (
            head + f"{what} at frame {alarm.frame} ({when}), "
            f"{self.alarm_after:.1f} s into the demo; the demo took {total:.1f} s"
        )


# -- the background process -----------------------------------------------------------


def engine_main(argv: Sequence[str] | None = None) -> int:
    """Run the MD engine and publish its frames (``python -m trajwatch.demo``)."""
    parser = argparse.ArgumentParser(prog="python -m trajwatch.demo")
    parser.add_argument("--size", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fault", default="clash")
    parser.add_argument("--at", type=int, default=200)
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:*")
    parser.add_argument("--wait", type=float, default=60.0)
    args = parser.parse_args(argv)

    from trajwatch.simulate import MDSpec, run_md
    from trajwatch.streaming import Publisher

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    parent = os.getppid()
    spec = MDSpec(
        repeat=args.size,
        temperature=args.temperature,
        steps=args.frames,
        fault=args.fault,
        fault_frame=args.at,
        seed=args.seed,
        source=f"Cu{4 * args.size**3}-{args.fault}",
    )
    with Publisher(args.endpoint, topic=spec.source) as publisher:
        print(f"endpoint {publisher.endpoint}", flush=True)
        frames = run_md(spec)
        first = next(frames)  # equilibration happens here, while the monitor starts
        if not publisher.wait_for_subscriber(args.wait):
            print("no monitor subscribed", file=sys.stderr)
            return 1
        period = 1.0 / args.rate if args.rate > 0 else 0.0
        start = time.perf_counter()
        for index, frame in enumerate(itertools.chain([first], frames)):
            delay = start + index * period - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            publisher.send(frame)
            if os.getppid() != parent:  # the monitor is gone: stop computing
                return 1
        publisher.close(linger=5.0)  # deliver the tail
    return 0


if __name__ == "__main__":
    sys.exit(engine_main())
