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
from typing import TYPE_CHECKING

from trajwatch import __version__

if TYPE_CHECKING:
    from trajwatch.events import Event
    from trajwatch.pipeline import Pipeline
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
    _add_reliability_flags(p)
    _add_curve_flags(p)
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
    for add in (_add_replay, _add_monitor, _add_scan, _add_imd_bridge, _add_keygen):
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


def _run_monitor(args: argparse.Namespace) -> int:
    from trajwatch.features.engine import warmup
    from trajwatch.pipeline import Pipeline
    from trajwatch.sinks import JsonlSink, Sink, StreamSink
    from trajwatch.stall import StallWatch
    from trajwatch.streaming import Subscriber

    sinks: list[Sink] = []
    if args.events:
        sinks.append(JsonlSink(args.events, fsync=args.fsync, append=args.append))
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
        curve=_curve_from_args(args, binds=args.bind),
        max_atoms=args.max_atoms,
        max_bytes=args.max_bytes,
    ) as subscriber:
        print(
            f"trajwatch monitor: listening on {args.endpoint} "
            f"(kernels compiled in {compile_seconds * 1e3:.0f} ms)",
            file=sys.stderr,
        )
        _stop_on_sigterm()
        stall = StallWatch(args.stall_timeout) if args.stall_timeout else None
        try:
            last = time.monotonic()
            while args.max_frames is None or frames < args.max_frames:
                frame = subscriber.recv(timeout=0.2)
                now = time.monotonic()
                if stall is not None:
                    if frame is not None:
                        _emit(pipeline, stall.seen(frame, now))
                    _emit(pipeline, stall.check(now))
                if frame is None:
                    idle = now - last
                    if frames and args.idle_timeout is not None and idle >= args.idle_timeout:
                        break
                    continue
                last = now
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
                f"malformed {stats.malformed}, lost {stats.lost}, restarts {stats.restarts}"
                + (f", stalls {stall.stalls}" if stall is not None else ""),
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


def _stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so the monitor closes its log and summarises."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


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

    group = p.add_argument_group("limits and stalls (docs/reliability.md)")
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
    if binds and args.allow_remote and curve is None:
        logging.getLogger("trajwatch").warning(
            "listening beyond this machine without CurveZMQ: frames travel unencrypted and "
            "anyone who can reach the port can connect (see 'trajwatch keygen')"
        )
    return curve


def _emit(pipeline: Pipeline, events: list[Event]) -> None:
    """Hand events raised outside the pipeline (stalls) to its sinks and its event list."""
    for event in events:
        pipeline.events.append(event)
        for sink in pipeline.sinks:
            sink.emit(event)


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
