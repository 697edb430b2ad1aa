"""The ``trajwatch`` command: ``main(argv) -> int``.

>>> main(["--version"])  # doctest: +ELLIPSIS
trajwatch ...
0
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from trajwatch import __version__

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
    p.set_defaults(command=_run_replay)


def _add_monitor(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "monitor",
        help="watch live frames from an engine or a replay and raise alarms",
        description="Subscribe to frames over ZeroMQ, run the detection pipeline per source "
        "and write events. With --no-tui, events go to stdout as JSON lines.",
        epilog=_examples(
            "trajwatch monitor --no-tui --events events.jsonl",
            "trajwatch monitor --endpoint tcp://127.0.0.1:6000 --no-tui | jq .",
            "trajwatch monitor --lossless --bind --idle-timeout 5 --events out.jsonl",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    p.add_argument(
        "--no-tui", action="store_true", help="print events as JSON lines instead of the live view"
    )
    p.add_argument(
        "--events",
        type=Path,
        metavar="PATH",
        help="append-free JSONL event log (flushed per event)",
    )
    p.add_argument("--fsync", action="store_true", help="fsync the event log after each event")
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
    p.set_defaults(command=_run_monitor)


def _add_scan(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "scan",
        help="run the detection pipeline over archived files, offline",
        description="Read trajectories frame by frame through the same pipeline as the live "
        "monitor and write the events. Prints a summary per file.",
        epilog=_examples(
            "trajwatch scan run.extxyz --events events.jsonl",
            "trajwatch scan runs/*.extxyz.gz --events all.jsonl --skip-bad",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument(
        "--events", type=Path, metavar="PATH", help="JSONL event log (default: events to stdout)"
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="count and skip malformed frames instead of stopping",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(command=_run_scan)


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
    p.add_argument("--seed", type=int, default=d.seed, help="(%(default)s)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads (%(default)s)")
    p.add_argument("--skip-bad", action="store_true",
                   help="count and skip malformed frames instead of stopping")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(command=_run_train)


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
    p.set_defaults(command=_run_imd_bridge)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trajwatch",
        description="Real-time anomaly detection for molecular-dynamics simulations.",
        epilog=_examples(
            "trajwatch scan run.extxyz --events events.jsonl",
            "trajwatch monitor --no-tui --events events.jsonl &   trajwatch replay run.extxyz",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-V", "--version", action="version", version=f"trajwatch {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in (_add_replay, _add_monitor, _add_scan, _add_train, _add_imd_bridge):
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
    except (OSError, ValueError) as error:
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
    with Publisher(
        args.endpoint,
        bind=not args.connect,
        lossless=args.lossless,
        allow_remote=args.allow_remote,
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
        )
        publisher.close(linger=args.wait)  # deliver what is still queued
    print(f"trajwatch replay: {stats.line()}", file=sys.stderr)
    return 0


def _run_monitor(args: argparse.Namespace) -> int:
    from trajwatch.features.engine import warmup
    from trajwatch.pipeline import Pipeline
    from trajwatch.sinks import JsonlSink, Sink, StreamSink
    from trajwatch.streaming import Subscriber

    sinks: list[Sink] = []
    if args.events:
        sinks.append(JsonlSink(args.events, fsync=args.fsync))
    sinks.append(StreamSink(sys.stdout))
    pipeline = Pipeline(sinks=sinks)
    compile_seconds = warmup()
    frames = 0
    start = time.perf_counter()
    with Subscriber(
        args.endpoint,
        bind=args.bind,
        topics=tuple(args.topics),
        lossless=args.lossless,
        allow_remote=args.allow_remote,
    ) as subscriber:
        print(
            f"trajwatch monitor: listening on {args.endpoint} "
            f"(kernels compiled in {compile_seconds * 1e3:.0f} ms)",
            file=sys.stderr,
        )
        _stop_on_sigterm()
        try:
            last = time.monotonic()
            while args.max_frames is None or frames < args.max_frames:
                frame = subscriber.recv(timeout=0.2)
                if frame is None:
                    idle = time.monotonic() - last
                    if frames and args.idle_timeout is not None and idle >= args.idle_timeout:
                        break
                    continue
                last = time.monotonic()
                pipeline.process(frame)
                frames += 1
        except KeyboardInterrupt:
            pass
        finally:
            for sink in sinks:
                sink.close()
            seconds = time.perf_counter() - start
            stats = subscriber.stats
            print(
                f"trajwatch monitor: {frames} frames from {len(pipeline.sources)} source(s) "
                f"in {seconds:.1f} s, {len(pipeline.events)} events, "
                f"malformed {stats.malformed}, lost {stats.lost}",
                file=sys.stderr,
            )
    return 0


def _run_scan(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from trajwatch.features.engine import warmup
    from trajwatch.pipeline import Pipeline
    from trajwatch.replay.xyz import XYZReader
    from trajwatch.sinks import JsonlSink, Sink, StreamSink

    sinks: list[Sink] = [JsonlSink(args.events) if args.events else StreamSink(sys.stdout)]
    warmup()
    console = Console(stderr=True)
    total_frames = 0
    try:
        for path in args.files:
            pipeline = Pipeline(sinks=sinks)
            size = path.stat().st_size
            with (
                XYZReader(path, skip_bad=args.skip_bad) as reader,
                Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TextColumn("{task.fields[frames]} frames"),
                    console=console,
                    disable=args.quiet,
                    transient=True,
                ) as progress,
            ):
                task = progress.add_task(path.name, total=size, frames=0)
                for n, frame in enumerate(reader, 1):
                    pipeline.process(frame)
                    if n % 64 == 0:
                        progress.update(task, completed=reader.tell(), frames=n)
                frames = reader.frames
                bad = reader.bad_frames
            total_frames += frames
            anomalies = [e for e in pipeline.events if e.event == "anomaly"]
            first = f", first alarm at frame {anomalies[0].frame}" if anomalies else ""
            console.print(
                f"{path}: {frames} frames, {len(anomalies)} alarms{first}"
                + (f", {bad} bad frames skipped" if bad else "")
            )
    finally:
        for sink in sinks:
            sink.close()
    return 0


def _run_imd_bridge(args: argparse.Namespace) -> int:
    from trajwatch.adapters.imd import ImdClient, parse_address, run_bridge
    from trajwatch.adapters.inprocess import FrameTarget, Watch
    from trajwatch.adapters.topology import numbers_from_file, numbers_from_spec, parse_types
    from trajwatch.adapters.units import imd_units
    from trajwatch.sinks import JsonlSink, Sink, StreamSink
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
        args.endpoint, bind=not args.connect, topic=args.source, allow_remote=args.allow_remote
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


def _stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so the monitor closes its log and summarises."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


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
        scaling_frames=args.scaling_frames, seed=args.seed, threads=args.threads,
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
