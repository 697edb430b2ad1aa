"""The ``trajwatch`` command: ``main(argv) -> int``.

>>> main(["--version"])  # doctest: +ELLIPSIS
trajwatch ...
0
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trajwatch import __version__

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID
    from rich.text import Text

    from trajwatch.checkpoint import Checkpointer
    from trajwatch.detectors.stack import DetectorStack
    from trajwatch.events import Event
    from trajwatch.frame import Frame
    from trajwatch.lstm.model import LSTMModel
    from trajwatch.monitor.scan import FileReport
    from trajwatch.monitor.state import MonitorState
    from trajwatch.pipeline import Pipeline, PipelineConfig
    from trajwatch.sinks import Sink
    from trajwatch.streaming.security import Curve

__all__ = ["entry_point", "main"]

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"

Command = Callable[[argparse.Namespace], int]


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _add_replay(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "replay",
        help="stream archived .xyz/.extxyz files over ZeroMQ, as a live engine would",
        description="Stream archived trajectories over ZeroMQ (protocol v1), one frame at a "
        "time. Waits for a subscriber before sending, then prints a line of stats.",
        epilog=_examples(
            "trajwatch replay run.extxyz --rate 50",
            "trajwatch replay a.extxyz.gz b.xyz --max --lossless",
            "trajwatch replay run.extxyz --loop --endpoint tcp://127.0.0.1:6000",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help="default: %(default)s")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument(
        "--rate",
        type=float,
        default=100.0,
        metavar="FPS",
        help="frames per second (default: %(default)s)",
    )
    pace.add_argument("--max", action="store_true", help="send as fast as possible")
    p.add_argument("--loop", action="store_true", help="start over at the end, until Ctrl-C")
    p.add_argument(
        "--max-frames", type=int, metavar="N", help="stop after N frames (e.g. with --loop)"
    )
    p.add_argument(
        "--lossless",
        action="store_true",
        help="PUSH/PULL: block instead of dropping (monitor needs --lossless too)",
    )
    p.add_argument(
        "--connect",
        action="store_true",
        help="connect instead of binding (to a proxy or a binding monitor)",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for a subscriber (default: %(default)s)",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="count and skip malformed frames instead of stopping",
    )
    p.add_argument(
        "--allow-remote", action="store_true", help="allow binding to a non-loopback address"
    )
    _add_curve_flags(p)
    p.set_defaults(command=_run_replay)


def _add_outputs(p: argparse.ArgumentParser, *, live: bool = True) -> None:
    """Where events go, besides the screen: shared by monitor, demo and scan."""
    p.add_argument(
        "--events",
        type=Path,
        metavar="PATH",
        help="JSONL event log, one line per event, flushed as written (overwritten)",
    )
    p.add_argument("--fsync", action="store_true", help="fsync the event log after each event")
    p.add_argument(
        "--dump",
        type=Path,
        metavar="DIR",
        help="write each flagged frame with --context frames around it to DIR/*.extxyz",
    )
    p.add_argument(
        "--context",
        type=int,
        default=10,
        metavar="N",
        help="frames before and after a flagged frame in a dump (default: %(default)s)",
    )
    if not live:
        return
    p.add_argument(
        "--alerts",
        metavar="ENDPOINT",
        help="re-publish events as JSON on a ZeroMQ PUB socket bound here "
        "(e.g. tcp://127.0.0.1:5556; topic '<kind>/<source>')",
    )
    p.add_argument(
        "--on-alarm",
        metavar="CMD",
        help="run this shell command once per anomaly, without waiting; the event is "
        "on its stdin as JSON and in $TRAJWATCH_EVENT",
    )
    p.add_argument(
        "--no-tui",
        action="store_true",
        help="print events as JSON lines on stdout instead of the live view "
        "(also the case when stdout is not a terminal)",
    )


def _add_monitor(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "monitor",
        help="watch live frames from an engine or a replay and raise alarms",
        description="Subscribe to frames over ZeroMQ, run the detection pipeline per source "
        "and show a live view: per source the frame rate, end-to-end latency, lost and "
        "malformed frames, status, sparklines of the fused score, temperature, energy, "
        "minimum distance and maximum displacement, and the event log with evidence. "
        "q or Ctrl-C ends with a summary. With --no-tui (or when stdout is not a "
        "terminal), events go to stdout as JSON lines.",
        epilog=_examples(
            "trajwatch monitor",
            "trajwatch monitor --events events.jsonl --dump flagged/ --alerts tcp://127.0.0.1:5556",
            "trajwatch monitor --on-alarm 'notify-send trajwatch \"$TRAJWATCH_SEVERITY\"'",
            "trajwatch monitor --endpoint tcp://127.0.0.1:6000 --no-tui | jq .",
            "trajwatch monitor --lossless --bind --idle-timeout 5 --events out.jsonl",
            "trajwatch monitor --reference aimd.extxyz   # judge against a trusted run",
            "trajwatch monitor --reference aimd-model.npz",
            "trajwatch monitor --checkpoint state.npz --events events.jsonl --append "
            "--stall-timeout 120",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_reference_options(p)
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help="default: %(default)s")
    p.add_argument("--bind", action="store_true", help="bind instead of connecting (fan-in)")
    p.add_argument(
        "--lossless", action="store_true", help="PULL instead of SUB (pair with replay --lossless)"
    )
    p.add_argument(
        "--topics",
        nargs="*",
        default=[""],
        metavar="PREFIX",
        help="only sources whose name starts with one of these",
    )
    _add_outputs(p)
    p.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    p.add_argument(
        "--idle-timeout",
        type=float,
        metavar="SECONDS",
        help="stop when no frame arrived for this long (after the first)",
    )
    p.add_argument(
        "--allow-remote", action="store_true", help="allow binding to a non-loopback address"
    )
    _add_reliability_flags(p)
    _add_curve_flags(p)
    p.set_defaults(command=_run_monitor)


def _add_scan(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "scan",
        help="run the detection pipeline over archived files, offline",
        description="Read trajectories frame by frame through the same pipeline as the live "
        "monitor and write the events, with a progress bar per file and a summary table "
        "(frames, alarms, first alarm, worst severity).",
        epilog=_examples(
            "trajwatch scan run.extxyz --events events.jsonl",
            "trajwatch scan run.extxyz --plot run.png --features run.csv",
            "trajwatch scan runs/*.extxyz.gz --events all.jsonl --skip-bad --dump flagged/",
            "trajwatch scan mlff.extxyz --reference aimd.extxyz --save-reference aimd-model.npz",
            "trajwatch scan mlff-*.extxyz --reference aimd-model.npz --events out.jsonl",
            "trajwatch scan archive/*.xyz --jobs 8 --events all.jsonl",
            "trajwatch scan archive/*.xyz --dask tcp://scheduler:8786 --events all.jsonl",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_reference_options(p)
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    _add_outputs(p, live=False)
    p.add_argument(
        "--plot",
        type=Path,
        metavar="PNG",
        help="figure of the fused score and features over the frames, alarms marked "
        "(needs matplotlib: the 'plot' extra); with several files, one per file: "
        "NAME-<file>.png",
    )
    p.add_argument(
        "--features",
        type=Path,
        metavar="CSV",
        help="feature table: frame, step, time, source, score, then every feature",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="count and skip malformed frames instead of stopping",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary table")
    _add_scan_parallel(p)
    p.set_defaults(command=_run_scan)


def _add_scan_parallel(p: argparse.ArgumentParser) -> None:
    """scan's --jobs and --dask (docs/scaling.md)."""
    p.add_argument(
        "-j",
        "--jobs",
        type=int,
        metavar="N",
        help="files scanned at once, each in a process of its own (default: one per CPU; "
        "1: one file after the other, in this process); the same events as one by one",
    )
    p.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="scan on a Dask cluster, one task per file: its scheduler (tcp://host:8786), "
        "or 'local' for a cluster of --jobs processes here (needs the 'dask' extra)",
    )


def _add_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from trajwatch.lstm.config import TrainConfig  # torch-free: --help stays fast

    d = TrainConfig()
    p = sub.add_parser(
        "train",
        help="fit the LSTM autoencoder on trusted trajectories (reference mode)",
        description="Compute the features of each trusted trajectory (e.g. an AIMD run), fit "
        "an LSTM autoencoder on windows of them (AdamW, early stopping on the last part of "
        "each run), calibrate its threshold on the held-out windows and write the model "
        "file. Seeded: the same files and options give the same model. See docs/lstm.md.",
        epilog=_examples(
            "trajwatch train aimd.extxyz -o model.pt",
            "trajwatch train run1.xyz run2.extxyz.gz -o model.pt --seed 1 --max-epochs 100",
            "trajwatch scan mlff.extxyz --model model.pt --events events.jsonl",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="PATH",
                   help="model file to write")  # fmt: skip
    p.add_argument("--window", type=int, default=d.window, help="frames per window (%(default)s)")
    p.add_argument("--hidden", type=int, default=d.hidden, help="LSTM units (%(default)s)")
    p.add_argument("--latent", type=int, default=d.latent, help="latent size (%(default)s)")
    p.add_argument("--max-epochs", type=int, default=d.max_epochs, help="(%(default)s)")
    p.add_argument("--patience", type=int, default=d.patience,
                   help="epochs without improvement before stopping (%(default)s)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="(%(default)s)")
    p.add_argument("--lr", type=float, default=d.learning_rate, help="AdamW (%(default)s)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="(%(default)s)")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="end share of each run held out for validation (%(default)s)")  # fmt: skip
    p.add_argument("--stride", type=int, default=d.stride,
                   help="frames between training windows (%(default)s)")  # fmt: skip
    p.add_argument("--alpha", type=float, default=d.alpha,
                   help="false-alarm rate per window for the threshold (%(default)s)")  # fmt: skip
    p.add_argument("--margin", type=float, default=d.margin,
                   help="factor on the calibrated threshold (%(default)s)")  # fmt: skip
    p.add_argument("--scaling", choices=("reference", "stream"), default=d.scaling,
                   help="standardise with the training data's statistics (reference, to judge "
                   "runs of the same system) or each run's own first frames (stream, for "
                   "other systems) (%(default)s)")  # fmt: skip
    p.add_argument("--scaling-frames", type=int, default=d.scaling_frames,
                   help="frames a stream-scaled model learns each run's scale from "
                   "(%(default)s)")  # fmt: skip
    p.add_argument("--scaling-skip", type=int, default=d.scaling_skip,
                   help="first frames of a run it leaves out of them (%(default)s)")  # fmt: skip
    p.add_argument("--seed", type=int, default=d.seed, help="(%(default)s)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads (%(default)s)")
    p.add_argument("--skip-bad", action="store_true",
                   help="count and skip malformed frames instead of stopping")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(command=_run_train)


def _add_reference_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "detection",
        "By default each source learns its own normal from its first frames (self-baseline). "
        "With --reference, every source is judged against a trusted run instead.",
    )
    g.add_argument(
        "--reference",
        type=Path,
        metavar="PATH",
        help="trusted trajectory (.xyz/.extxyz[.gz]) to fit the detectors on, or a model "
        "saved with --save-reference (.npz/.json)",
    )
    g.add_argument(
        "--save-reference",
        type=Path,
        metavar="PATH",
        help="write the model fitted on --reference here (.npz, or .json) for later runs",
    )
    g.add_argument(
        "--fusion",
        choices=("cauchy", "min", "fisher", "vote"),
        default="cauchy",
        help="how detector p-values are combined (default: %(default)s; vote = k-of-n)",
    )
    g.add_argument(
        "--vote-k",
        type=int,
        default=2,
        metavar="K",
        help="K for --fusion vote (default: %(default)s)",
    )
    # The LSTM autoencoder (docs/lstm.md): one more detector in the fusion.
    g.add_argument(
        "--model",
        type=Path,
        metavar="PATH",
        help="LSTM autoencoder model file (from trajwatch train) to judge windows with "
        "(default: the weights shipped with trajwatch)",
    )
    g.add_argument(
        "--no-lstm", action="store_true", help="leave the LSTM autoencoder out of the fusion"
    )
    g.add_argument(
        "--lstm-stride",
        type=int,
        default=1,
        metavar="N",
        help="score the LSTM window every N frames (default: %(default)s)",
    )


def _detection(args: argparse.Namespace) -> tuple[PipelineConfig, DetectorStack | None]:
    """The pipeline config and the reference model (or None) the options ask for.

    Fitted (or loaded) once per command: scan builds a pipeline per file.
    """
    cached = getattr(args, "_detection_cache", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    from dataclasses import replace

    from trajwatch.pipeline import (
        PipelineConfig,
        fit_reference,
        load_reference,
        save_reference,
    )

    config = replace(
        PipelineConfig(),
        fusion=getattr(args, "fusion", "cauchy"),
        vote_k=getattr(args, "vote_k", 2),
        **_lstm_options(args),
    )
    model = None
    path: Path | None = getattr(args, "reference", None)
    save: Path | None = getattr(args, "save_reference", None)
    if path is None:
        if save is not None:
            raise ValueError("--save-reference needs --reference")
    else:
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        if path.suffix in (".npz", ".json"):
            model = load_reference(path)
        else:
            from trajwatch.replay.xyz import iread

            start = time.perf_counter()
            model = fit_reference(iread(path), config)
            print(
                f"trajwatch: fitted the reference on {model.meta['frames']} frames of {path} "
                f"in {time.perf_counter() - start:.1f} s",
                file=sys.stderr,
            )
        if save is not None:
            save_reference(model, save)
    args._detection_cache = (config, model)
    return config, model


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from trajwatch.demo import DEMO_FAULTS, DemoSpec

    defaults = DemoSpec()
    p = sub.add_parser(
        "demo",
        help="a real MD run with a fault injected, caught live by the monitor",
        description="Start an ASE EMT molecular-dynamics run of fcc copper at 300 K in a "
        "background process, stream it over ZeroMQ, inject a fault at a random (or chosen) "
        "frame and watch the live monitor catch it. Offline, about half a minute; needs "
        "ASE (pip install 'trajwatch[md]').",
        epilog=_examples(
            "trajwatch demo",
            "trajwatch demo --fault kick --at 220",
            "trajwatch demo --fault heat --frames 600 --dump flagged/",
            "trajwatch demo --no-tui --rate 200 | jq .",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--fault",
        choices=DEMO_FAULTS,
        default=defaults.fault,
        help="clash: an atom pushed into its neighbour; kick: one atom gets 5 eV; heat: "
        "the thermostat target ramps up; dt: the timestep blows up (default: %(default)s)",
    )
    p.add_argument(
        "--at", type=int, metavar="FRAME", help="frame of the fault (default: random, 180-259)"
    )
    p.add_argument(
        "--frames",
        type=int,
        metavar="N",
        help="frames to run (default: 400; for heat, 220 after the fault)",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=defaults.rate,
        metavar="FPS",
        help="frames per second streamed (default: %(default)s)",
    )
    p.add_argument(
        "--size",
        type=int,
        default=defaults.size,
        metavar="N",
        help="supercell repeat: 4·N³ atoms (default: %(default)s, 108 atoms)",
    )
    p.add_argument("--seed", type=int, metavar="N", help="random seed (fault frame and MD)")
    p.add_argument(
        "--stop-on-alarm",
        action="store_true",
        help="stop the MD engine as soon as the alarm is raised (the Python callback at work)",
    )
    _add_outputs(p)
    p.set_defaults(command=_run_demo)


def _add_imd_bridge(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "imd-bridge",
        help="receive an IMDv3 stream (LAMMPS, GROMACS, NAMD) and publish it as frames",
        description="Connect to an engine's IMDv3 port, convert its units and publish protocol "
        "v1 frames. IMD sends no elements: give them with --elements or --topology. With "
        "--detect, the pipeline also runs here and --on-alarm can pause or end the engine.",
        epilog=_examples(
            "trajwatch imd-bridge 127.0.0.1:8888 --engine lammps:metal --elements Ar*500",
            "trajwatch imd-bridge 8888 --engine gromacs --topology conf.pdb",
            "trajwatch imd-bridge 8888 --engine namd --topology sys.pdb --detect "
            "--on-alarm pause --dump-dir alarms --events events.jsonl",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("address", metavar="HOST:PORT", help="where the engine listens")
    p.add_argument(
        "--engine",
        required=True,
        metavar="NAME",
        help="units on the wire: gromacs, namd, imdv3 or lammps:STYLE (e.g. lammps:metal)",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--elements", metavar="SPEC", help='e.g. "Ar*500" or "(O,H,H)*216"')
    what.add_argument(
        "--topology", type=Path, metavar="FILE", help=".xyz/.extxyz, .pdb or LAMMPS data file"
    )
    p.add_argument("--types", metavar="MAP", help='LAMMPS type -> element, e.g. "1=Ar,2=O"')
    p.add_argument("--lj", metavar="SIGMA,EPS,MASS", help="for lammps:lj (Å, eV, amu)")
    p.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help="default: %(default)s")
    p.add_argument("--connect", action="store_true", help="connect instead of binding")
    p.add_argument("--source", default="imd", help="stream name (default: %(default)s)")
    p.add_argument("--detect", action="store_true", help="also run the pipeline here")
    p.add_argument("--events", type=Path, metavar="PATH", help="with --detect: JSONL log")
    p.add_argument(
        "--on-alarm",
        choices=("none", "pause", "kill", "detach"),
        default="none",
        help="with --detect: what to ask of the engine on alarm (default: %(default)s)",
    )
    p.add_argument("--stop-on", default="high", help="lowest severity that acts (default: high)")
    p.add_argument("--dump-dir", type=Path, metavar="DIR", help="with --detect: flagged frames")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the engine")
    p.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    p.add_argument(
        "--allow-remote", action="store_true", help="allow binding to a non-loopback address"
    )
    _add_curve_flags(p)
    p.set_defaults(command=_run_imd_bridge)


def _add_proxy(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "proxy",
        help="fan-in: many engines publish to one address, several monitors subscribe",
        description="Run ZeroMQ's XSUB/XPUB proxy device: engines (replay --connect, "
        "adapters with bind=False) connect to the frontend, monitors to the backend. Frames "
        "pass through untouched and subscriptions go back to the engines, so monitors can "
        "share the sources out with --topics and an engine waits for its monitor. Runs until "
        "Ctrl-C or SIGTERM. See docs/scaling.md.",
        epilog=_examples(
            "trajwatch proxy",
            "trajwatch replay run.extxyz --connect --endpoint tcp://127.0.0.1:5554",
            "trajwatch monitor --topics nodeA/ --alerts tcp://127.0.0.1:5556",
            "trajwatch proxy --frontend tcp://0.0.0.0:5554 --backend tcp://0.0.0.0:5555 "
            "--allow-remote --stats 10",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from trajwatch.streaming.proxy import DEFAULT_BACKEND, DEFAULT_FRONTEND

    p.add_argument(
        "--frontend",
        default=DEFAULT_FRONTEND,
        metavar="ENDPOINT",
        help="bound here, engines connect (default: %(default)s)",
    )
    p.add_argument(
        "--backend",
        default=DEFAULT_BACKEND,
        metavar="ENDPOINT",
        help="bound here, monitors connect (default: %(default)s, the monitor's default)",
    )
    p.add_argument(
        "--hwm",
        type=int,
        default=1000,
        metavar="N",
        help="frames queued per peer before a slow monitor loses some (default: %(default)s)",
    )
    p.add_argument(
        "--stats",
        type=float,
        metavar="SECONDS",
        help="print what was forwarded every SECONDS on stderr (always once at the end)",
    )
    p.add_argument(
        "--allow-remote", action="store_true", help="allow binding to non-loopback addresses"
    )
    p.add_argument(
        "--curve-server-key",
        type=Path,
        metavar="PATH",
        help="CurveZMQ on both sockets, the proxy being the server with this key pair "
        "(NAME.key_secret); engines and monitors connect as clients (docs/security.md)",
    )
    p.add_argument(
        "--curve-allow",
        type=Path,
        action="append",
        default=[],
        metavar="PATH",
        help="public key of an engine or monitor allowed in (NAME.key), or a directory "
        "of them; repeatable",
    )
    p.set_defaults(command=_run_proxy)


def _add_events(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "events",
        help="the merged events of several monitors, from their alert sockets",
        description="Subscribe to the alert sockets of one or more monitors (monitor --alerts) "
        "and show their events as one stream, as they come: a line per event on a terminal, "
        "JSON lines otherwise (or with --json). PUB/SUB: events sent before this command "
        "connected are not seen; each monitor's --events log is the complete record.",
        epilog=_examples(
            "trajwatch events tcp://127.0.0.1:5556 tcp://127.0.0.1:5557",
            "trajwatch events tcp://node1:5556 tcp://node2:5556 --topics anomaly "
            "--events all.jsonl",
            "trajwatch events tcp://127.0.0.1:5556 --json | jq .source",
            "trajwatch events tcp://127.0.0.1:5556 tcp://127.0.0.1:5557 --alerts "
            "tcp://127.0.0.1:5560 --json > /dev/null",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("endpoints", nargs="+", metavar="ENDPOINT", help="alert sockets to connect to")
    p.add_argument(
        "--topics",
        nargs="*",
        default=[""],
        metavar="PREFIX",
        help="only events whose '<kind>/<source>' starts with one of these "
        "(e.g. anomaly, anomaly/nodeA)",
    )
    p.add_argument("--events", type=Path, metavar="PATH", help="also write them to a JSONL log")
    p.add_argument(
        "--alerts",
        metavar="ENDPOINT",
        help="also re-publish the merged stream on one PUB socket bound here, as monitor "
        "--alerts does (one address for other tools)",
    )
    p.add_argument(
        "--allow-remote", action="store_true", help="allow --alerts on a non-loopback address"
    )
    p.add_argument("--json", action="store_true", help="JSON lines on stdout, also on a terminal")
    p.add_argument("--max-events", type=int, metavar="N", help="stop after N events")
    p.add_argument(
        "--wait",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how long to wait for the connections before saying how many are up; the "
        "others are retried all along (default: %(default)s)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        metavar="SECONDS",
        help="stop when no event arrived for this long",
    )
    p.set_defaults(command=_run_events)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trajwatch",
        description="Real-time anomaly detection for molecular-dynamics simulations.",
        epilog=_examples(
            "trajwatch demo",
            "trajwatch scan run.extxyz --events events.jsonl --plot run.png",
            "trajwatch monitor --events events.jsonl &   trajwatch replay run.extxyz",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-V", "--version", action="version", version=f"trajwatch {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    commands = (_add_demo, _add_replay, _add_monitor, _add_scan, _add_train, _add_imd_bridge)
    for add in (*commands, _add_keygen, _add_proxy, _add_events, _add_bench):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    logging.basicConfig(
        level=logging.WARNING - 10 * args.verbose,
        format="trajwatch: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    command: Command | None = getattr(args, "command", None)
    if command is None:
        parser.print_help()
        return 2
    try:
        return command(args)
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        zmq = sys.modules.get("zmq")  # an address in use is a ZMQError, not an OSError
        if not isinstance(error, (OSError, ValueError, *([zmq.ZMQError] if zmq else []))):
            raise
        print(f"trajwatch: error: {error}", file=sys.stderr)
        return 1


def entry_point() -> None:
    sys.exit(main())


def _run_replay(args: argparse.Namespace) -> int:
    from trajwatch.replay.replay import replay
    from trajwatch.streaming import Publisher

    for path in args.files:
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
    _compile("replay", pipeline=False, reader=True)
    with Publisher(
        args.endpoint,
        bind=not args.connect,
        lossless=args.lossless,
        allow_remote=args.allow_remote,
        curve=_curve_from_args(args, binds=not args.connect),
    ) as publisher:
        print(
            f"trajwatch replay: waiting for a subscriber on {args.endpoint} ...", file=sys.stderr
        )
        if not publisher.wait_for_subscriber(args.wait):
            print(f"trajwatch replay: no subscriber within {args.wait:g} s", file=sys.stderr)
            return 1
        stats = replay(
            args.files,
            publisher,
            rate=None if args.max else args.rate,
            loop=args.loop,
            skip_bad=args.skip_bad,
            max_frames=args.max_frames,
        )
        publisher.close(linger=args.wait)  # deliver what is still queued
    print(f"trajwatch replay: {stats.line()}", file=sys.stderr)
    return 0


#: seconds of compiling after which the user is told what the wait is
_SLOW_COMPILE = 1.0


def _compile(command: str, *, pipeline: bool = True, reader: bool = False) -> float:
    """Compile the kernels ``command`` runs (the pipeline's, the file reader's) before the
    first frame; the seconds it took.

    Loading them from Numba's disk cache takes a fraction of a second; a first run
    compiles them for tens of seconds, and says so on stderr.
    """
    steps: list[Callable[[], object]] = []
    if reader:
        from trajwatch.replay.xyz import warmup as reader_warmup

        steps.append(reader_warmup)
    if pipeline:
        from trajwatch.pipeline import warmup

        steps.append(warmup)
    message = (
        f"trajwatch {command}: compiling the kernels; only the first run does this "
        "(Numba caches them on disk) ..."
    )
    start = time.perf_counter()
    with _notice_if_slow(_SLOW_COMPILE, message):
        for step in steps:
            step()
    return time.perf_counter() - start


@contextlib.contextmanager
def _notice_if_slow(seconds: float, message: str) -> Iterator[None]:
    """Print ``message`` to stderr if the body is still running after ``seconds``.

    >>> with _notice_if_slow(5.0, "still busy"):
    ...     pass
    """
    done = threading.Event()

    def notice() -> None:
        if not done.wait(seconds):
            print(message, file=sys.stderr, flush=True)

    thread = threading.Thread(target=notice, name="trajwatch-notice", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _pipeline(args: argparse.Namespace, sinks: Sequence[Sink]) -> Pipeline:
    """The detection pipeline the options ask for (monitor, demo, and each file of scan)."""
    from trajwatch.pipeline import Pipeline

    config, reference = _detection(args)
    return Pipeline(config, sinks, reference=reference, lstm=_lstm(args, config))


def _lstm_options(args: argparse.Namespace) -> dict[str, Any]:
    """The PipelineConfig fields of --model, --no-lstm and --lstm-stride."""
    model: Path | None = getattr(args, "model", None)
    off = bool(getattr(args, "no_lstm", False))
    if model is not None:
        if off:
            raise ValueError("--model and --no-lstm contradict each other")
        if not model.is_file():
            raise FileNotFoundError(f"no such file: {model}")
    stride = int(getattr(args, "lstm_stride", 1))
    if stride < 1:
        raise ValueError("--lstm-stride must be at least 1")
    return {"lstm": not off, "lstm_model": str(model or ""), "lstm_stride": stride}


def _lstm(args: argparse.Namespace, config: PipelineConfig) -> LSTMModel | None:
    """The LSTM model, loaded (and run once) a single time per command; None if it is off.

    The shipped weights are skipped with a warning if they do not fit this feature engine;
    a --model that does not fit is an error.
    """
    if not config.lstm:
        return None
    cached: tuple[LSTMModel | None] | None = getattr(args, "_lstm_cache", None)
    if cached is not None:
        return cached[0]
    import numpy as np

    from trajwatch.features.engine import FeatureEngine
    from trajwatch.lstm.model import FeatureMismatchError
    from trajwatch.lstm.scorer import WindowScorer
    from trajwatch.pipeline import load_lstm

    model = load_lstm(config)
    assert model is not None
    try:
        model.feature_index(FeatureEngine(window=config.window).names)
    except FeatureMismatchError as error:
        if config.lstm_model:
            raise
        logging.getLogger("trajwatch").warning("running without the LSTM: %s", error)
        args._lstm_cache = (None,)
        return None
    WindowScorer(model).push(np.zeros((model.first_scored_frame + 1, len(model.features))))
    args._lstm_cache = (model,)
    return model


def _use_tui(args: argparse.Namespace) -> bool:
    """The live view needs a terminal; into a pipe or a file, JSON lines make sense."""
    return not args.no_tui and sys.stdout.isatty()


class _Outputs:
    """The sinks (and frame observers) a live command's options ask for."""

    def __init__(self, args: argparse.Namespace, *, tui: bool) -> None:
        import subprocess

        from trajwatch.sinks import (
            AlarmCommand,
            AlertPublisher,
            FrameDump,
            JsonlSink,
            StreamSink,
        )

        self.sinks: list[Sink] = []
        self.observers: list[FrameDump] = []
        try:
            if args.events:  # first: the durable record is written before anything else
                append = getattr(args, "append", False)  # monitor --append
                self.sinks.append(JsonlSink(args.events, fsync=args.fsync, append=append))
            if not tui:
                self.sinks.append(StreamSink(sys.stdout))
            if args.alerts:
                allow_remote = getattr(args, "allow_remote", False)
                self.sinks.append(AlertPublisher(args.alerts, allow_remote=allow_remote))
            if args.on_alarm:
                # the command's output must not draw over the view or into the JSON on stdout
                output = subprocess.DEVNULL if tui else sys.stderr
                self.sinks.append(AlarmCommand(args.on_alarm, output=output))
            if args.dump:
                dump = FrameDump(args.dump, context=args.context)
                self.sinks.append(dump)
                self.observers.append(dump)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        errors: list[BaseException] = []
        for sink in self.sinks:
            try:
                sink.close()
            except OSError as error:  # noqa: PERF203 (a handful of sinks, closed once)
                errors.append(error)
        self.sinks.clear()
        if errors:
            raise errors[0]


def _live_session(
    state: MonitorState,
    receive: Callable[[float], Frame | None],
    pipeline: Pipeline,
    outputs: _Outputs,
    *,
    tui: bool,
    max_frames: int | None = None,
    idle_timeout: float | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> str:
    """Ingest until a stop condition, with the live view if ``tui``; why it stopped."""
    from rich.console import Console

    from trajwatch.monitor.live import LiveView, StateLogHandler, ingest

    previous = _stop_on_sigterm()
    package_logger = logging.getLogger("trajwatch")
    handler = StateLogHandler(state)
    propagate = package_logger.propagate
    view: LiveView | None = None
    if tui:
        # log lines go into the view: written to stderr they would tear the picture
        package_logger.addHandler(handler)
        package_logger.propagate = False
        view = LiveView(Console()).start()
    reason = "interrupted"
    try:
        reason = ingest(
            receive,
            pipeline,
            state,
            view=view,
            observers=outputs.observers,
            max_frames=max_frames,
            idle_timeout=idle_timeout,
            should_stop=should_stop,
        )
    except KeyboardInterrupt:
        reason = "interrupted"
    finally:
        state.finished = True
        try:
            outputs.close()
        finally:
            if view is not None:
                view.stop(state.snapshot())
                package_logger.removeHandler(handler)
                package_logger.propagate = propagate
            signal.signal(signal.SIGTERM, previous)
    return reason


def _summarise(
    name: str, state: MonitorState, pipeline: Pipeline, seconds: float, *, tui: bool
) -> None:
    if tui:
        from rich.console import Console

        from trajwatch.monitor.render import render_summary

        Console().print(render_summary(state.snapshot()))
    snapshot = state.snapshot()
    print(
        f"trajwatch {name}: {snapshot.frames} frames from {len(snapshot.sources)} source(s) "
        f"in {seconds:.1f} s, {len(pipeline.events)} events, "
        f"malformed {snapshot.malformed}, lost {snapshot.lost}"
        + _reliability_counts(state, pipeline),
        file=sys.stderr,
    )


def _run_monitor(args: argparse.Namespace) -> int:
    from trajwatch.monitor.state import MonitorState
    from trajwatch.streaming import Subscriber

    tui = _use_tui(args)
    compile_seconds = _compile("monitor")
    outputs = _Outputs(args, tui=tui)  # ready (alert socket bound) before frames can come
    try:
        subscriber = Subscriber(
            args.endpoint,
            bind=args.bind,
            topics=tuple(args.topics),
            lossless=args.lossless,
            allow_remote=args.allow_remote,
            curve=_curve_from_args(args, binds=args.bind),
            max_atoms=args.max_atoms,
            max_bytes=args.max_bytes,
        )
    except BaseException:
        outputs.close()
        raise
    with subscriber:
        state = MonitorState(endpoint=subscriber.endpoint, stats=subscriber.stats)
        if args.stall_timeout:
            state.stall_after = args.stall_timeout
        pipeline = _pipeline(args, outputs.sinks)
        receive = _with_stall_watch(subscriber.recv, args.stall_timeout, pipeline, state)
        checkpointer = _checkpointer(args, pipeline)
        if checkpointer is not None:
            receive = _with_checkpoints(receive, checkpointer)
        print(
            f"trajwatch monitor: listening on {subscriber.endpoint} "
            f"(kernels compiled in {compile_seconds * 1e3:.0f} ms)",
            file=sys.stderr,
        )
        start = time.perf_counter()
        _live_session(
            state,
            receive,
            pipeline,
            outputs,
            tui=tui,
            max_frames=args.max_frames,
            idle_timeout=args.idle_timeout,
        )
        if checkpointer is not None:
            checkpointer.save()
        _summarise("monitor", state, pipeline, time.perf_counter() - start, tui=tui)
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from trajwatch.demo import AlarmClock, DemoSpec, Engine, ase_missing
    from trajwatch.monitor.state import MonitorState
    from trajwatch.sinks import AlarmCallback
    from trajwatch.streaming import Subscriber

    missing = ase_missing()
    if missing:
        print(f"trajwatch: error: {missing}", file=sys.stderr)
        return 1
    spec = DemoSpec(
        fault=args.fault,
        at=args.at,
        frames=args.frames,
        rate=args.rate,
        size=args.size,
        seed=args.seed,
    )
    start = time.monotonic()
    tui = _use_tui(args)
    engine = Engine.spawn(spec)
    print(
        f"trajwatch demo: EMT molecular dynamics of {spec.atoms} Cu atoms at "
        f"{spec.temperature:g} K, {spec.total_frames(engine.fault_at)} frames at "
        f"{spec.rate:g} frames/s; "
        f"fault '{spec.fault}' at frame {engine.fault_at}",
        file=sys.stderr,
    )
    clock = AlarmClock(engine.fault_at)
    try:
        _compile("demo")  # while the engine equilibrates
        engine.wait_ready()
        with Subscriber(engine.endpoint) as subscriber:
            state = MonitorState(
                title=f"trajwatch demo ({spec.fault} at frame {engine.fault_at})",
                endpoint=engine.endpoint,
                stats=subscriber.stats,
            )
            outputs = _Outputs(args, tui=tui)
            outputs.sinks.append(clock)
            if args.stop_on_alarm:
                outputs.sinks.append(AlarmCallback(lambda event: engine.terminate(), once=True))
            pipeline = _pipeline(args, outputs.sinks)
            reason = _live_session(
                state,
                subscriber.recv,
                pipeline,
                outputs,
                tui=tui,
                should_stop=lambda: engine.exited_for() > 0.5,
            )
            seconds = time.monotonic() - start
            _summarise("demo", state, pipeline, seconds, tui=tui)
    finally:
        engine.stop()
    if state.frames == 0 and reason != "interrupted":
        error = engine.errors or "no frames"
        print(f"trajwatch: error: the demo engine failed: {error}", file=sys.stderr)
        return 1
    print(f"trajwatch demo: {clock.line(seconds)}", file=sys.stderr)
    caught = clock.alarm is not None
    return 0 if caught or reason in ("quit", "interrupted") else 1


def _run_scan(args: argparse.Namespace) -> int:
    from rich.console import Console

    from trajwatch.monitor.plot import matplotlib_missing, save_plot
    from trajwatch.monitor.scan import Recorder, scan_file
    from trajwatch.monitor.trace import FeatureCsv, Trace
    from trajwatch.sinks import FrameDump, JsonlSink, StreamSink

    for path in args.files:
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
    if args.plot and (missing := matplotlib_missing()):
        print(f"trajwatch: error: {missing}", file=sys.stderr)
        return 1
    jobs = _scan_jobs(args)
    if args.dask or (jobs > 1 and len(args.files) > 1):
        return _scan_in_parallel(args, jobs)
    _compile("scan", reader=True)
    console = Console(stderr=True)
    sinks: list[Sink] = [
        JsonlSink(args.events, fsync=args.fsync) if args.events else StreamSink(sys.stdout)
    ]
    dump = FrameDump(args.dump, context=args.context) if args.dump else None
    if dump is not None:
        sinks.append(dump)
    table = FeatureCsv(args.features) if args.features else None
    reports: list[tuple[FileReport, Trace | None]] = []
    try:
        for path in args.files:
            trace = Trace() if args.plot else None
            recorders: list[Recorder] = []
            if trace is not None:
                recorders.append(trace.record)
            if table is not None:
                recorders.append(lambda frame, watch, events: table.write(frame, watch))
            with _scan_progress(console, quiet=args.quiet) as progress:
                task = progress.add_task(path.name, total=path.stat().st_size, frames=0)

                report = scan_file(
                    path,
                    _pipeline(args, sinks),
                    skip_bad=args.skip_bad,
                    observers=[dump] if dump is not None else [],
                    recorders=recorders,
                    progress=functools.partial(_progress, progress, task),
                )
            reports.append((report, trace))
    finally:
        for sink in sinks:
            sink.close()
        if table is not None:
            table.close()
    _scan_summary(
        console,
        args,
        [report for report, _ in reports],
        rows=table.rows if table else 0,
        dumped=len(dump.written) if dump is not None else 0,
    )
    if args.plot:
        for report, trace in reports:
            assert trace is not None
            out = _plot_path(args.plot, report.source, len(reports) > 1)
            for source_trace in trace.sources.values():
                save_plot(source_trace, out, title=str(report.path))
                console.print(f"plot: {out}")
    return 0


def _scan_progress(console: Console, *, quiet: bool) -> Progress:
    """scan's progress bar: bytes of the file(s) on disk, frames read, time left."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[frames]:,} frames"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet or not console.is_terminal,
        transient=True,
    )


def _scan_summary(
    console: Console,
    args: argparse.Namespace,
    reports: Sequence[FileReport],
    *,
    rows: int,
    dumped: int,
) -> None:
    """The table, one row per file, and where the feature table and flagged frames went."""
    from trajwatch.monitor.scan import render_scan_table

    if not args.quiet:
        console.print(render_scan_table(reports))
    if args.features:
        console.print(f"features: {args.features} ({rows:,} rows)")
    if dumped:
        console.print(f"flagged frames: {dumped} file(s) in {args.dump}")


def _plot_path(base: Path, source: str, several: bool) -> Path:
    """Where ``scan --plot`` draws a file's figure: NAME.png, or with several files
    NAME-<source>.png."""
    if not several:
        return base
    return base.with_name(f"{base.stem}-{_safe_name(source)}{base.suffix}")


def _progress(progress: Progress, task: TaskID, done: int, total: int, frames: int) -> None:
    progress.update(task, completed=done, total=total, frames=frames)


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "file"


# -- scan of many files at once (trajwatch.parallel, docs/scaling.md) -------------------


def _scan_jobs(args: argparse.Namespace) -> int:
    from trajwatch.parallel import dask_missing, default_jobs

    if args.dask and (missing := dask_missing()):
        raise ValueError(missing)
    jobs: int = default_jobs() if args.jobs is None else args.jobs
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, not {jobs}")
    return jobs


def _reference_json(args: argparse.Namespace) -> str | None:
    """The reference model, fitted (or loaded) here once, as JSON text for the workers."""
    import tempfile

    from trajwatch.pipeline import save_reference

    _, model = _detection(args)
    if model is None:
        return None
    with tempfile.TemporaryDirectory(prefix="trajwatch-") as directory:
        return save_reference(model, Path(directory) / "model.json").read_text("utf-8")


def _scan_in_parallel(args: argparse.Namespace, jobs: int) -> int:
    """Each file a task on a process pool or a Dask cluster; the events, feature rows and
    summary gathered here in the order of the files, as the serial scan writes them."""
    from rich.console import Console

    from trajwatch.parallel import (
        ScanTask,
        TaskResult,
        in_file_order,
        options_of,
        run_dask,
        run_pool,
    )
    from trajwatch.sinks import JsonlSink, StreamSink

    console = Console(stderr=True)
    options = options_of(args)
    reference = _reference_json(args)
    tasks = [
        ScanTask(
            str(path),
            options,
            skip_bad=args.skip_bad,
            features=args.features is not None,
            plot=None if args.plot is None else str(args.plot),
            plot_by_source=len(args.files) > 1,
            dump=None if args.dump is None else str(args.dump),
            context=args.context,
            reference=reference,
        ).to_dict()
        for path in args.files
    ]
    sizes = [path.stat().st_size for path in args.files]
    if args.dask:
        quiet = logging.ERROR if not args.verbose else logging.WARNING - 10 * args.verbose
        completed = run_dask(tasks, args.dask, jobs=args.jobs, log_level=quiet)
        where = f"Dask ({args.dask})"
    else:
        _compile("scan", reader=True)  # once here: the workers then load it from the cache
        completed = run_pool(tasks, jobs=jobs)
        where = f"{min(jobs, len(tasks))} processes"
    sink: Sink = (
        JsonlSink(args.events, fsync=args.fsync) if args.events else StreamSink(sys.stdout)
    )
    table = None
    if args.features:
        table = open(args.features, "w", encoding="utf-8", newline="")  # noqa: SIM115
    reports: list[FileReport] = []
    plots: list[str] = []
    rows = dumped = 0
    try:
        with _scan_progress(console, quiet=args.quiet) as progress:
            bar = progress.add_task(f"{len(tasks)} files on {where}", total=sum(sizes), frames=0)

            def tracked() -> Iterator[tuple[int, TaskResult]]:
                frames = 0  # the bar moves as files complete, in whatever order
                for index, data in completed:
                    result = TaskResult.from_dict(data)
                    frames += result.report.frames
                    progress.update(bar, advance=sizes[index], frames=frames)
                    yield index, result

            for _, result in in_file_order(tracked()):
                for event in result.report.events:
                    sink.emit(event)
                if table is not None and result.csv:
                    # one header, at the top: the serial scan's single table
                    table.write(result.csv if rows == 0 else result.csv.split("\r\n", 1)[1])
                    rows += result.csv_rows
                dumped += len(result.dumped)
                result.raise_error()  # after its events: the serial scan logs those too
                reports.append(result.report)
                plots.extend(result.plots)
    finally:
        completed.close()  # cancels the files not started yet
        sink.close()
        if table is not None:
            table.close()
    _scan_summary(console, args, reports, rows=rows, dumped=dumped)
    for out in plots:
        console.print(f"plot: {out}")
    return 0


def _run_imd_bridge(args: argparse.Namespace) -> int:
    from trajwatch.adapters.imd import ImdClient, parse_address, run_bridge
    from trajwatch.adapters.inprocess import FrameTarget, Watch
    from trajwatch.adapters.topology import numbers_from_file, numbers_from_spec, parse_types
    from trajwatch.adapters.units import imd_units
    from trajwatch.sinks import JsonlSink, StreamSink
    from trajwatch.streaming import Publisher

    host, port = parse_address(args.address)
    lj = None
    if args.lj:
        sigma, epsilon, mass = (float(v) for v in args.lj.split(","))  # ValueError if not 3
        lj = (sigma, epsilon, mass)
    units = imd_units(args.engine, lj)
    types = parse_types(args.types) if args.types else None
    if args.elements:
        numbers = numbers_from_spec(args.elements)
    else:
        numbers = numbers_from_file(args.topology, types)
    with Publisher(
        args.endpoint,
        bind=not args.connect,
        topic=args.source,
        allow_remote=args.allow_remote,
        curve=_curve_from_args(args, binds=not args.connect),
    ) as publisher:
        target: FrameTarget = publisher
        watch = None
        if args.detect:
            sinks: list[Sink] = [JsonlSink(args.events) if args.events else StreamSink(sys.stdout)]
            target = watch = Watch(
                sinks=sinks, stop_on=args.stop_on, dump_dir=args.dump_dir, publish=publisher
            )
        print(f"trajwatch imd-bridge: connecting to {host}:{port} ...", file=sys.stderr)
        client = ImdClient(
            host,
            port,
            numbers=numbers,
            units=units,
            source=args.source,
            connect_timeout=args.timeout,
        )
        _stop_on_sigterm()
        try:
            stats = run_bridge(
                client,
                target,
                on_alarm=args.on_alarm if args.detect else "none",
                max_frames=args.max_frames,
            )
            if stats.stopped == "pause":
                print(
                    "trajwatch imd-bridge: engine paused; Ctrl-C resumes it and detaches",
                    file=sys.stderr,
                )
                try:
                    signal.pause()
                except KeyboardInterrupt:
                    client.resume()
        except KeyboardInterrupt:
            stats = None
        finally:
            client.close()
            if watch is not None:
                watch.close()
    if stats is not None:
        print(f"trajwatch imd-bridge: {stats.line()}", file=sys.stderr)
    return 0


def _run_proxy(args: argparse.Namespace) -> int:
    from trajwatch.streaming.protocol import is_local_endpoint
    from trajwatch.streaming.proxy import Proxy
    from trajwatch.streaming.security import load_server

    if args.curve_allow and not args.curve_server_key:
        raise ValueError("--curve-allow needs --curve-server-key")
    curve = None
    if args.curve_server_key:
        if not args.curve_allow:
            raise ValueError("--curve-server-key needs --curve-allow (the clients' public keys)")
        curve = load_server(args.curve_server_key, args.curve_allow)
    remote = not (is_local_endpoint(args.frontend) and is_local_endpoint(args.backend))
    if args.allow_remote and remote and curve is None:
        logging.getLogger("trajwatch").warning(
            "listening beyond this machine without CurveZMQ: frames travel unencrypted and "
            "anyone who can reach the port can connect (see 'trajwatch keygen')"
        )
    proxy = Proxy(
        args.frontend, args.backend, hwm=args.hwm, allow_remote=args.allow_remote, curve=curve
    )
    previous = _stop_on_sigterm()
    try:
        proxy.start()
        print(
            f"trajwatch proxy: engines connect to {proxy.frontend}, monitors to {proxy.backend}",
            file=sys.stderr,
        )
        start = time.monotonic()
        stats = None
        try:
            while not proxy.join(args.stats or 1.0):
                stats = proxy.stats()
                if args.stats:
                    print(f"trajwatch proxy: {stats.line()}", file=sys.stderr)
            print("trajwatch: error: the proxy stopped on its own", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            stats = proxy.stats()
        seconds = time.monotonic() - start
        rate = stats.bytes_out / seconds / 1e6 if seconds > 0 else 0.0
        print(
            f"trajwatch proxy: {stats.line()} in {seconds:.1f} s ({rate:,.1f} MB/s)",
            file=sys.stderr,
        )
        return 0
    finally:
        proxy.close()
        signal.signal(signal.SIGTERM, previous)


def _run_events(args: argparse.Namespace) -> int:
    from rich.console import Console

    from trajwatch.streaming.alerts import AlertSubscriber

    json_lines = args.json or not sys.stdout.isatty()
    console = Console()
    sinks: list[Sink] = []
    subscriber = AlertSubscriber(args.endpoints, topics=tuple(args.topics))
    previous = _stop_on_sigterm()
    count = 0
    sources: set[str] = set()
    try:
        if args.events:
            from trajwatch.sinks import JsonlSink

            sinks.append(JsonlSink(args.events))
        if args.alerts:
            from trajwatch.sinks import AlertPublisher

            sinks.append(AlertPublisher(args.alerts, allow_remote=args.allow_remote))
        if json_lines:
            from trajwatch.sinks import StreamSink

            sinks.append(StreamSink(sys.stdout))
        connected = subscriber.wait_connected(args.wait)
        print(
            f"trajwatch events: connected to {connected} of {len(subscriber.endpoints)} "
            f"alert socket(s): {' '.join(subscriber.endpoints)}",
            file=sys.stderr,
        )
        while args.max_events is None or count < args.max_events:
            event = subscriber.recv(args.idle_timeout)
            if event is None:
                break
            count += 1
            sources.add(event.source)
            for sink in sinks:
                sink.emit(event)
            if not json_lines:
                console.print(_event_line(event))
    except KeyboardInterrupt:
        pass
    finally:
        subscriber.close()
        for sink in sinks:
            sink.close()
        signal.signal(signal.SIGTERM, previous)
    print(
        f"trajwatch events: {count} events from {len(sources)} source(s), "
        f"malformed {subscriber.malformed}",
        file=sys.stderr,
    )
    return 0


def _event_line(event: Event) -> Text:
    """One event as a line of the merged view (the monitor's event log, one row)."""
    from rich.text import Text

    from trajwatch.monitor.render import EVENT_STYLE, SEVERITY_STYLE, format_evidence

    onset = "" if event.onset_frame is None else f" (onset {event.onset_frame})"
    line = Text(time.strftime("%H:%M:%S "), "dim")
    line.append(f"{event.source}  ", "bold")
    line.append(f"{event.event:<9}", EVENT_STYLE.get(event.event, ""))
    line.append(f"{event.severity:<9}", SEVERITY_STYLE.get(event.severity, ""))
    line.append(f"frame {event.frame}{onset}  score {event.score:.3g}  ")
    line.append(format_evidence(event), "dim")
    return line


def _stop_on_sigterm() -> Any:
    """Turn SIGTERM into KeyboardInterrupt so the monitor closes its log and summarises;
    returns the handler it replaced."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


# -- reliability and security options (docs/reliability.md, docs/security.md) ------------


def _size(text: str) -> int:
    """A byte count, with an optional binary suffix: 4096, 64K, 512M, 1G."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = text.strip().upper().removesuffix("B")
    scale = units.get(text[-1:], 1)
    number = text[:-1] if scale > 1 else text
    try:
        value = int(float(number) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4096, 64M, 1G)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, not {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return value


def _add_reliability_flags(p: argparse.ArgumentParser) -> None:
    from trajwatch.streaming.protocol import DEFAULT_MAX_ATOMS, DEFAULT_MAX_BYTES

    group = p.add_argument_group("limits, stalls, restarts (docs/reliability.md)")
    group.add_argument(
        "--max-atoms",
        type=_positive_int,
        default=DEFAULT_MAX_ATOMS,
        metavar="N",
        help="reject frames with more atoms than this (default: %(default)s)",
    )
    group.add_argument(
        "--max-bytes",
        type=_size,
        default=DEFAULT_MAX_BYTES,
        metavar="SIZE",
        help="reject messages larger than this, before allocating (e.g. 64M; default: 1G)",
    )
    group.add_argument(
        "--append",
        action="store_true",
        help="append to the --events log instead of starting it afresh (a restarted monitor)",
    )
    group.add_argument(
        "--checkpoint",
        type=Path,
        metavar="PATH",
        help="save what the detectors learned to PATH (.npz or .json) now and then and at "
        "exit, and restore it at start, so a restarted monitor keeps its baseline",
    )
    group.add_argument(
        "--checkpoint-every",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="seconds between checkpoints (default: %(default)s)",
    )
    group.add_argument(
        "--stall-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="a 'stalled' event when a source sends nothing for this long, 'resumed' when "
        "it is back; 0 turns it off (default: %(default)s)",
    )


def _add_curve_flags(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group(
        "CurveZMQ encryption and authentication (keys from 'trajwatch keygen'; docs/security.md)"
    )
    group.add_argument(
        "--curve-server-key",
        type=Path,
        metavar="SECRET",
        help="be the CURVE server with this key pair (NAME.key_secret); needs --curve-allow",
    )
    group.add_argument(
        "--curve-allow",
        type=Path,
        action="append",
        default=[],
        metavar="PUBLIC",
        help="a client's public key (NAME.key), or a directory of them, that may connect "
        "(repeatable)",
    )
    group.add_argument(
        "--curve-client-key",
        type=Path,
        metavar="SECRET",
        help="be a CURVE client with this key pair (NAME.key_secret); needs --curve-server",
    )
    group.add_argument(
        "--curve-server",
        type=Path,
        metavar="PUBLIC",
        help="the server's public key (NAME.key), with --curve-client-key",
    )


def _curve_from_args(args: argparse.Namespace, *, binds: bool) -> Curve | None:
    """The CurveZMQ role the options ask for (None: plain TCP), with checks."""
    from trajwatch.streaming.protocol import is_local_endpoint
    from trajwatch.streaming.security import load_client, load_server

    server_key, client_key = args.curve_server_key, args.curve_client_key
    if server_key and client_key:
        raise ValueError("--curve-server-key and --curve-client-key exclude each other")
    if args.curve_allow and not server_key:
        raise ValueError("--curve-allow needs --curve-server-key")
    if args.curve_server and not client_key:
        raise ValueError("--curve-server needs --curve-client-key")
    curve: Curve | None = None
    if server_key:
        if not args.curve_allow:
            raise ValueError("--curve-server-key needs --curve-allow (the clients' public keys)")
        curve = load_server(server_key, args.curve_allow)
    elif client_key:
        if not args.curve_server:
            raise ValueError("--curve-client-key needs --curve-server (the server's public key)")
        curve = load_client(client_key, args.curve_server)
    if binds and args.allow_remote and curve is None and not is_local_endpoint(args.endpoint):
        logging.getLogger("trajwatch").warning(
            "listening beyond this machine without CurveZMQ: frames travel unencrypted and "
            "anyone who can reach the port can connect (see 'trajwatch keygen')"
        )
    return curve


def _with_stall_watch(
    receive: Callable[[float], Frame | None],
    timeout: float,
    pipeline: Pipeline,
    state: MonitorState,
) -> Callable[[float], Frame | None]:
    """``receive`` with stall detection (``timeout`` 0: off): stalled/resumed events go to
    the pipeline's sinks and event list and to the live view, like the pipeline's own."""
    if not timeout:
        return receive
    from trajwatch.stall import StallWatch, watch_stalls

    def emit(event: Event) -> None:
        pipeline.events.append(event)
        for sink in pipeline.sinks:
            sink.emit(event)
        state.record(event)

    return watch_stalls(receive, StallWatch(timeout), emit)


def _checkpointer(args: argparse.Namespace, pipeline: Pipeline) -> Checkpointer | None:
    """With --checkpoint: a Checkpointer for ``pipeline``, restored from the file if any."""
    if args.checkpoint is None:
        return None
    from trajwatch.checkpoint import Checkpointer

    checkpointer = Checkpointer(pipeline, args.checkpoint, every=args.checkpoint_every)
    restored = checkpointer.restore()
    if restored:
        counts = ", ".join(f"{name} at frame {pipeline.sources[name].frames}" for name in restored)
        print(f"trajwatch monitor: restored from {args.checkpoint}: {counts}", file=sys.stderr)
    return checkpointer


def _with_checkpoints(
    receive: Callable[[float], Frame | None], checkpointer: Checkpointer
) -> Callable[[float], Frame | None]:
    from trajwatch.checkpoint import with_checkpoints

    return with_checkpoints(receive, checkpointer)


def _reliability_counts(state: MonitorState, pipeline: Pipeline) -> str:
    """The summary line's tail: publisher restarts and stalls seen."""
    restarts = int(getattr(state.stats, "restarts", 0))
    stalls = sum(event.event == "stalled" for event in pipeline.events)
    return f", restarts {restarts}, stalls {stalls}"


def _add_keygen(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "keygen",
        help="make CurveZMQ key pairs for encrypted, authenticated streams",
        description="Write a CurveZMQ key pair per NAME into DIR: NAME.key (public: give it "
        "to the other side) and NAME.key_secret (keep it; mode 0600). The publisher "
        "(replay, engine) is usually the server, each monitor a client.",
        epilog=_examples(
            "trajwatch keygen keys/   # keys/server.key(_secret), keys/client.key(_secret)",
            "trajwatch replay run.extxyz --curve-server-key keys/server.key_secret "
            "--curve-allow keys/client.key",
            "trajwatch monitor --curve-client-key keys/client.key_secret "
            "--curve-server keys/server.key",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("directory", type=Path, metavar="DIR")
    p.add_argument(
        "names",
        nargs="*",
        default=["server", "client"],
        metavar="NAME",
        help="one key pair per name (default: server client)",
    )
    p.set_defaults(command=_run_keygen)


def _run_keygen(args: argparse.Namespace) -> int:
    from trajwatch.streaming.security import keygen

    for name in args.names:
        public, secret = keygen(args.directory, name)
        print(f"{name}: public {public}, secret {secret}")
    return 0


def _run_train(args: argparse.Namespace) -> int:
    import numpy as np
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from trajwatch.features.engine import FeatureEngine
    from trajwatch.lstm.config import TrainConfig
    from trajwatch.lstm.training import EpochReport, train
    from trajwatch.pipeline import PipelineConfig
    from trajwatch.replay.xyz import XYZReader

    config = TrainConfig(
        window=args.window, hidden=args.hidden, latent=args.latent,
        batch_size=args.batch_size, max_epochs=args.max_epochs, patience=args.patience,
        learning_rate=args.lr, weight_decay=args.weight_decay, val_fraction=args.val_fraction,
        stride=args.stride, alpha=args.alpha, margin=args.margin, scaling=args.scaling,
        scaling_frames=args.scaling_frames, scaling_skip=args.scaling_skip, seed=args.seed,
        threads=args.threads,
    )  # fmt: skip
    console = Console(stderr=True)
    sequences = []
    names: tuple[str, ...] = ()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TextColumn("{task.fields[info]}"), console=console,
                  disable=args.quiet, transient=True) as progress:  # fmt: skip
        for path in args.files:
            engine = FeatureEngine(window=PipelineConfig().window)  # as the pipeline's
            names = tuple(engine.names)
            rows = []
            with XYZReader(path, skip_bad=args.skip_bad) as reader:
                task = progress.add_task(path.name, total=None, info="")
                for frame in reader:
                    rows.append(engine.update(frame))
                    if len(rows) % 64 == 0:
                        progress.update(task, info=f"{len(rows)} frames")
            progress.update(task, total=1, completed=1, info=f"{len(rows)} frames")
            sequences.append(np.vstack(rows) if rows else np.zeros((0, len(names))))
            console.print(f"{path}: {len(rows)} frames")

        task = progress.add_task("training", total=config.max_epochs, info="")

        def on_epoch(r: EpochReport) -> None:
            info = f"train {r.train_loss:.4g}  val {r.val_loss:.4g}  best {r.best_val_loss:.4g}"
            progress.update(task, completed=r.epoch, info=info)

        model = train(
            sequences, names, config, on_epoch=on_epoch, sources=[p.name for p in args.files]
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    model.save(args.output)
    info = model.info
    console.print(
        f"{args.output}: {info['train_windows']} training / {info['val_windows']} validation "
        f"windows, {info['epochs']} epochs (best {info['best_epoch']}), validation loss "
        f"{info['initial_val_loss']:.4g} -> {info['best_val_loss']:.4g}, threshold "
        f"{model.threshold:.4g} (alpha {config.alpha:g}, margin {config.margin:g}), "
        f"{args.output.stat().st_size / 1024:.0f} KiB"
    )
    return 0


def _add_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench",
        help="run the benchmark suite: every figure beside its baseline, one table",
        description="Run every benchmarks/bench_*.py of a trajwatch checkout (found beside "
        "the package source or in the current directory) and print one table: each figure "
        "beside its baseline measured in the same run (bare pyzmq, ASE and extxyz readers, "
        "batch recompute, River, the study's batch pipeline), the target and pass/fail. "
        "The first run generates MD data (cached under ~/.cache/trajwatch-bench).",
        epilog=_examples(
            "trajwatch bench --quick                    # under 2 minutes once data is cached",
            "trajwatch bench --json bench.json          # the full suite (about 20 minutes)",
            "trajwatch bench --quick --only reader headline",
            "trajwatch bench --list",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="small data, few repeats")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    p.add_argument(
        "--markdown", type=Path, metavar="PATH", help="also write the table as Markdown"
    )
    p.add_argument("--only", nargs="+", default=[], metavar="NAME", help="run only these")
    p.add_argument("--dir", type=Path, metavar="PATH", help="the benchmarks directory")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.set_defaults(command=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    from trajwatch import bench

    directory = bench.find_benchmarks(args.dir)
    if args.list:
        for name, path in bench.discover(directory).items():
            print(f"{name:<12} {path}")
        return 0
    suite = bench.run_suite(
        directory,
        quick=args.quick,
        only=args.only,
        progress=lambda line: print(f"trajwatch bench: {line}", file=sys.stderr, flush=True),
    )
    print(bench.report(suite))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(bench.to_json(suite))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(bench.format_markdown(suite.rows) + "\n")
    return 1 if suite.failed else 0
