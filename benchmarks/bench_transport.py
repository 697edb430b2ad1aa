"""Transport benchmark: Publisher -> ZeroMQ -> Subscriber -> decoded Frame, vs bare pyzmq.

The publisher runs in a separate process (this file re-run with ``--serve``), the
receiver in this one, both over tcp://127.0.0.1: with 2 cores each side gets one. The
baseline is a bare pyzmq loop sending the very same bytes (prebuilt protocol v1 parts)
over the same socket types and receiving them with ``recv_multipart()``; it is measured in
the same run, interleaved with trajwatch, and each figure is the best of the repeats.

* throughput: lossless PUSH/PULL (nothing dropped, so frames/s is what gets through);
  frames/s between the first and the last frame received.
* latency: the default XPUB/SUB mode paced at a fixed rate; the sender puts
  ``time.perf_counter()`` (CLOCK_MONOTONIC, shared by processes) in the frame's ``time``
  field right before sending and the receiver takes the difference once it holds the
  decoded Frame. p50/p99 over all frames.
* receive variants (full runs only): three ways to receive the same bytes
  (recv_multipart copy=True + decode, copy=False + decode, and the Subscriber's own
  path: copy=False parts whose ``more`` flag replaces a RCVMORE query, decoded in place).
* codec: encode and decode alone, in-process, microseconds per frame.

Frames carry positions, numbers, velocities, forces, energy, cell and time (6 parts).

    python benchmarks/bench_transport.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import struct
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

try:
    import trajwatch  # noqa: F401 (checks that it imports)
except ImportError:  # running from a source checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _serving import RoundServer
from trajwatch.frame import Frame
from trajwatch.streaming import Publisher, Subscriber, decode, encode

SIZES = (100, 1000, 10000)
TIME_OFFSET = 32  # byte offset of the time field in the header (docs/protocol.md)
LOSSLESS_HWM = 1000


def make_frame(n_atoms: int, seed: int = 0) -> Frame:
    rng = np.random.default_rng(seed)
    return Frame(
        rng.uniform(0, 30, size=(n_atoms, 3)),
        rng.integers(1, 80, size=n_atoms),
        velocities=rng.normal(size=(n_atoms, 3)),
        forces=rng.normal(size=(n_atoms, 3)),
        energy=-3.2 * n_atoms,
        cell=np.eye(3) * 30.0,
        step=0,
        time=0.0,
        source="bench",
    )


# -- the publishing process --------------------------------------------------------


def _child(mode: str, kind: str, n_atoms: int, count: int, rate: float) -> int:
    """Bind, print the endpoint, wait for the receiver, send ``count`` frames."""
    frames = [make_frame(n_atoms, seed) for seed in range(4)]
    lossless = kind == "push"
    interval = 1.0 / rate if rate > 0 else 0.0
    if mode == "trajwatch":
        pub = Publisher("tcp://127.0.0.1:*", topic="bench", lossless=lossless, hwm=LOSSLESS_HWM)
        print(pub.endpoint, flush=True)
        if not pub.wait_for_subscriber(30.0):
            return 1
        t0 = time.perf_counter()
        for i in range(count):
            if interval:
                _pace(t0 + i * interval)
            frame = frames[i & 3]
            frame.time = time.perf_counter()
            pub.send(frame)
        pub.close(linger=30.0)
        return 0
    # bare pyzmq: the same bytes, the same socket types and options
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.PUSH if lossless else zmq.XPUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, LOSSLESS_HWM)
    if lossless:
        sock.setsockopt(zmq.IMMEDIATE, 1)
    else:
        sock.setsockopt(zmq.XPUB_NODROP, 1)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    print(f"tcp://127.0.0.1:{port}", flush=True)
    if not sock.poll(30_000, zmq.POLLOUT if lossless else zmq.POLLIN):
        return 1
    messages = [[bytes(memoryview(p)) for p in encode(f, topic="bench")] for f in frames]
    headers = [bytearray(m[1]) for m in messages]
    flags = 0 if lossless else zmq.NOBLOCK
    pack_time = struct.Struct("<d").pack_into
    t0 = time.perf_counter()
    for i in range(count):
        if interval:
            _pace(t0 + i * interval)
        parts = messages[i & 3]
        header = headers[i & 3]
        pack_time(header, TIME_OFFSET, time.perf_counter())
        parts[1] = bytes(header)
        with contextlib.suppress(zmq.Again):  # dropped at the HWM, as Publisher does
            sock.send_multipart(parts, flags, copy=False)
    sock.close(linger=30_000)
    ctx.term()
    return 0


def _pace(target: float) -> None:
    delay = target - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


def _serve() -> int:
    """One publishing round per stdin line ``mode kind n_atoms count rate`` (see
    :func:`_child`), then ``done``: one process serves the whole benchmark, since starting
    a Python process costs seconds on a loaded machine."""
    for line in sys.stdin:
        mode, kind, n, count, rate = line.split()
        _child(mode, kind, int(n), int(count), float(rate))
        print("done", flush=True)
    return 0


_server: RoundServer | None = None


class _Sender:
    """One publishing round of the server process (``_serve``)."""

    def __init__(self, mode: str, kind: str, n_atoms: int, count: int, rate: float) -> None:
        global _server
        if _server is None or not _server.alive:
            _server = RoundServer(__file__)
        self._server = _server
        self.endpoint = _server.start(f"{mode} {kind} {n_atoms} {count} {rate}")

    def finish(self) -> None:
        self._server.finish()


def _close_server() -> None:
    global _server
    if _server is not None:
        _server.close()
        _server = None


# -- receivers -----------------------------------------------------------------------


def _recv_trajwatch(endpoint: str, kind: str, count: int) -> tuple[int, float, list[float]]:
    """Receive with a Subscriber; (frames, seconds first->last, latencies in s)."""
    lat: list[float] = []
    got = 0
    t_first = t_last = 0.0
    with Subscriber(endpoint, lossless=kind == "push", hwm=LOSSLESS_HWM) as sub:
        while got < count:
            frame = sub.recv(2.0)
            if frame is None:
                break
            now = time.perf_counter()
            assert frame.time is not None
            lat.append(now - frame.time)
            if got == 0:
                t_first = now
            t_last = now
            got += 1
    return got, t_last - t_first, lat


def _recv_bare(
    endpoint: str, kind: str, count: int, variant: str = "bare"
) -> tuple[int, float, list[float]]:
    """Receive with a bare socket: recv_multipart only, or + decode (copy / no copy)."""
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.PULL if kind == "push" else zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, LOSSLESS_HWM)
    sock.setsockopt(zmq.RCVTIMEO, 2000)
    if kind != "push":
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    unpack_time = struct.Struct("<d").unpack_from
    lat: list[float] = []
    got = 0
    t_first = t_last = 0.0
    try:
        while got < count:
            try:
                if variant == "bare":
                    parts = sock.recv_multipart()
                    sent = unpack_time(parts[1], TIME_OFFSET)[0]
                elif variant == "copy":
                    sent = decode(sock.recv_multipart()).time or 0.0
                else:  # "nocopy"
                    sent = decode(sock.recv_multipart(copy=False)).time or 0.0
            except zmq.Again:
                break
            now = time.perf_counter()
            lat.append(now - sent)
            if got == 0:
                t_first = now
            t_last = now
            got += 1
    finally:
        sock.close()
        ctx.term()
    return got, t_last - t_first, lat


def _one_run(
    mode: str, receiver: str, kind: str, n_atoms: int, count: int, rate: float = 0.0
) -> tuple[int, float, list[float]]:
    sender = _Sender(mode, kind, n_atoms, count, rate)
    try:
        if receiver == "trajwatch":
            return _recv_trajwatch(sender.endpoint, kind, count)
        return _recv_bare(sender.endpoint, kind, count, receiver)
    finally:
        sender.finish()


def _fps(result: tuple[int, float, list[float]]) -> float:
    got, seconds, _ = result
    return (got - 1) / seconds if got > 1 and seconds > 0 else 0.0


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) * 1e3 if values else float("nan")


# -- the benchmark -------------------------------------------------------------------


def bench_throughput(quick: bool) -> list[dict[str, Any]]:
    # about a second per run at each size: shorter runs at 10,000 atoms moved by +-25 %
    counts = {100: 40_000, 1000: 12_000, 10000: 4_000}
    repeats = 2 if quick else 5
    rows = []
    for n in SIZES:
        count = counts[n] // (16 if quick else 1)
        tw: list[float] = []
        bare: list[float] = []
        for _ in range(repeats):  # interleaved, best of: the machine is shared
            tw.append(_fps(_one_run("trajwatch", "trajwatch", "push", n, count)))
            bare.append(_fps(_one_run("bare", "bare", "push", n, count)))
        best_tw, best_bare = max(tw), max(bare)
        mb = _message_bytes(n) / 1e6
        rows.append(
            {
                "atoms": n,
                "frames": count,
                "trajwatch_fps": best_tw,
                "bare_fps": best_bare,
                "ratio": best_tw / best_bare if best_bare else float("nan"),
                "trajwatch_MBps": best_tw * mb,
                "bare_MBps": best_bare * mb,
                "trajwatch_runs": tw,
                "bare_runs": bare,
            }
        )
    return rows


#: paced rates for the latency runs: 1000 frames/s, but 10,000 atoms (0.8 GB/s at 1000/s
#: with velocities and forces) at 250 frames/s, still far above what such an MD run emits
LATENCY_RATES = {100: 1000.0, 1000: 1000.0, 10000: 250.0}


def bench_latency(quick: bool) -> list[dict[str, Any]]:
    seconds = 1.0 if quick else 5.0
    rows = []
    for n in SIZES:
        rate = LATENCY_RATES[n]
        count = int(seconds * rate)
        tw = _one_run("trajwatch", "trajwatch", "xpub", n, count, rate)
        bare = _one_run("bare", "bare", "xpub", n, count, rate)
        rows.append(
            {
                "atoms": n,
                "rate": rate,
                "frames": count,
                "trajwatch_received": tw[0],
                "bare_received": bare[0],
                "trajwatch_p50_ms": _pct(tw[2], 50),
                "trajwatch_p99_ms": _pct(tw[2], 99),
                "trajwatch_max_ms": _pct(tw[2], 100),
                "bare_p50_ms": _pct(bare[2], 50),
                "bare_p99_ms": _pct(bare[2], 99),
                "bare_max_ms": _pct(bare[2], 100),
            }
        )
    return rows


def bench_receive_variants(quick: bool) -> list[dict[str, Any]]:
    """Receiver-side choices, all fed by the (cheap) bare sender over PUSH/PULL."""
    counts = {100: 20_000, 1000: 8_000, 10000: 1_500}
    rows = []
    for n in SIZES:
        count = counts[n] // (4 if quick else 2)
        row: dict[str, Any] = {"atoms": n}
        for receiver in ("bare", "copy", "nocopy", "trajwatch"):
            row[f"{receiver}_fps"] = _fps(_one_run("bare", receiver, "push", n, count))
        rows.append(row)
    return rows


def bench_cpu(quick: bool) -> list[dict[str, Any]]:
    """CPU time per frame of each side, in one process over inproc (no I/O thread).

    Measured with ``time.thread_time`` in batches (send N, then receive N), best of the
    repeats: unlike wall-clock rates this hardly depends on what else the machine runs.
    """
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        return [_cpu_one(ctx, n, quick) for n in SIZES]
    finally:
        ctx.term()


def _cpu_one(ctx: zmq.Context[Any], n: int, quick: bool) -> dict[str, Any]:
    batch = {100: 4000, 1000: 2000, 10000: 300}[n] // (4 if quick else 1)
    repeats = 3 if quick else 9
    frame = make_frame(n)
    pub = Publisher(f"inproc://tw{n}", lossless=True, hwm=0, context=ctx, topic="bench")
    sub = Subscriber(f"inproc://tw{n}", lossless=True, hwm=0, context=ctx)
    push = ctx.socket(zmq.PUSH)
    pull = ctx.socket(zmq.PULL)
    push.setsockopt(zmq.SNDHWM, 0)
    pull.setsockopt(zmq.RCVHWM, 0)
    push.bind(f"inproc://bare{n}")
    pull.connect(f"inproc://bare{n}")
    parts = [bytes(memoryview(p)) for p in encode(frame, topic="bench")]
    header = bytearray(parts[1])
    pack_time = struct.Struct("<d").pack_into

    def tw_send() -> None:
        for _ in range(batch):
            frame.time = time.perf_counter()
            pub.send(frame)

    def tw_recv() -> None:
        for _ in range(batch):
            assert sub.recv(5.0) is not None

    def bare_send() -> None:
        for _ in range(batch):
            pack_time(header, TIME_OFFSET, time.perf_counter())
            parts[1] = bytes(header)
            push.send_multipart(parts, copy=False)

    def bare_recv() -> None:
        for _ in range(batch):
            pull.recv_multipart()

    steps = {"tw_send": tw_send, "tw_recv": tw_recv, "bare_send": bare_send}
    steps["bare_recv"] = bare_recv
    best = dict.fromkeys(steps, float("inf"))
    try:
        for _ in range(repeats):
            for key, body in steps.items():
                t0 = time.thread_time()
                body()
                best[key] = min(best[key], (time.thread_time() - t0) / batch)
        assert sub.stats.malformed == 0 and sub.stats.lost == 0
    finally:
        pub.close()
        sub.close()
        push.close(linger=0)
        pull.close(linger=0)
    us = {key: value * 1e6 for key, value in best.items()}
    return {
        "atoms": n,
        **{f"{key}_us": value for key, value in us.items()},
        "send_ratio": us["bare_send"] / us["tw_send"],
        "recv_ratio": us["bare_recv"] / us["tw_recv"],
    }


def bench_codec(quick: bool) -> list[dict[str, Any]]:
    rows = []
    for n in SIZES:
        frame = make_frame(n)
        loops = max(200, (20_000 if not quick else 5_000) * 100 // n)
        t0 = time.perf_counter()
        for _ in range(loops):
            parts = encode(frame)
        t_enc = (time.perf_counter() - t0) / loops
        raw = [bytes(memoryview(p)) for p in parts]
        t0 = time.perf_counter()
        for _ in range(loops):
            decode(raw)
        t_dec = (time.perf_counter() - t0) / loops
        rows.append({"atoms": n, "encode_us": t_enc * 1e6, "decode_us": t_dec * 1e6})
    return rows


def _message_bytes(n_atoms: int) -> int:
    return sum(len(memoryview(p).cast("B")) for p in encode(make_frame(n_atoms)))


def run(quick: bool = False) -> dict[str, Any]:
    """Run the whole benchmark; the results as a JSON-able dict."""
    t0 = time.perf_counter()
    try:
        throughput = bench_throughput(quick)
        latency = bench_latency(quick)
        variants = [] if quick else bench_receive_variants(quick)  # diagnostic: full only
    finally:
        _close_server()
    cpu = bench_cpu(quick)
    codec = bench_codec(quick)
    lat100 = next(r for r in latency if r["atoms"] == 100)
    min_ratio = min(r["ratio"] for r in throughput)
    return {
        "benchmark": "transport",
        "quick": quick,
        "publisher": "separate process (subprocess), receiver in the benchmark process",
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg": list(os.getloadavg()),
            "python": sys.version.split()[0],
            "pyzmq": zmq.__version__,
            "libzmq": zmq.zmq_version(),
            "numpy": np.__version__,
        },
        "throughput": throughput,
        "latency": latency,
        "receive_variants": variants,
        "cpu_per_frame": cpu,
        "codec": codec,
        "targets": {
            "throughput_ratio_min": min_ratio,
            "throughput_ratio_target": 0.8,
            "p99_ms_100_atoms_1000fps": lat100["trajwatch_p99_ms"],
            "p99_ms_target": 0.5,
            "pass": bool(min_ratio >= 0.8 and lat100["trajwatch_p99_ms"] < 0.5),
        },
        "seconds": time.perf_counter() - t0,
    }


def summary(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The suite's rows: throughput and p99 latency beside the bare pyzmq loop, and the
    receiving side's CPU per frame (the figure a loaded machine disturbs least)."""
    from trajwatch.bench import row

    rows = [row(f"publish -> Frame, {r['atoms']} atoms", r["trajwatch_fps"],
                unit="frames/s", baseline=r["bare_fps"], baseline_name="bare pyzmq",
                target=">= 0.8x bare", ok=r["ratio"] >= 0.8)
            for r in result["throughput"]]  # fmt: skip
    for r in result["latency"]:
        ok = r["trajwatch_p99_ms"] < 0.5 if r["atoms"] == 100 else None
        rows.append(row(f"p99 latency, {r['atoms']} atoms at {r['rate']:.0f}/s",
                        r["trajwatch_p99_ms"], unit="ms", baseline=r["bare_p99_ms"],
                        baseline_name="bare pyzmq", target="< 0.5 ms" if ok is not None else "",
                        ok=ok))  # fmt: skip
    rows += [row(f"receive CPU per frame, {r['atoms']} atoms", r["tw_recv_us"], unit="us",
                 baseline=r["bare_recv_us"], baseline_name="bare pyzmq")
             for r in result["cpu_per_frame"]]  # fmt: skip
    return rows


def print_table(result: dict[str, Any]) -> None:
    print(f"transport benchmark ({'quick' if result['quick'] else 'full'}); publisher in a")
    print(f"separate process; load average {result['machine']['loadavg'][0]:.2f}")
    print()
    print("throughput, lossless PUSH/PULL, best of repeats")
    print(f"{'atoms':>6} {'trajwatch f/s':>14} {'bare f/s':>10} {'ratio':>6} {'MB/s':>7}")
    for r in result["throughput"]:
        print(
            f"{r['atoms']:>6} {r['trajwatch_fps']:>14,.0f} {r['bare_fps']:>10,.0f} "
            f"{r['ratio']:>6.2f} {r['trajwatch_MBps']:>7.0f}"
        )
    print()
    print("latency (ms), XPUB/SUB paced (frames/s in the last column), send -> decoded Frame")
    head = ("atoms", "tw p50", "tw p99", "tw max", "bare p50", "bare p99", "rate")
    print("{:>6} {:>7} {:>7} {:>7} {:>9} {:>9} {:>5}".format(*head))
    for r in result["latency"]:
        print(
            f"{r['atoms']:>6} {r['trajwatch_p50_ms']:>7.3f} {r['trajwatch_p99_ms']:>7.3f} "
            f"{r['trajwatch_max_ms']:>7.2f} {r['bare_p50_ms']:>9.3f} {r['bare_p99_ms']:>9.3f} "
            f"{r['rate']:>5.0f}"
        )
    print()
    if result["receive_variants"]:  # full runs only
        print("receive variants, frames/s (bare sender; recv only / +decode copy=True /")
        print("+decode copy=False / Subscriber: copy=False parts, fused decode)")
        print(f"{'atoms':>6} {'recv only':>10} {'copy':>9} {'no copy':>9} {'Subscriber':>11}")
        for r in result["receive_variants"]:
            print(
                f"{r['atoms']:>6} {r['bare_fps']:>10,.0f} {r['copy_fps']:>9,.0f} "
                f"{r['nocopy_fps']:>9,.0f} {r['trajwatch_fps']:>11,.0f}"
            )
        print()
    print("CPU us per frame, one process over inproc (ratio = bare / trajwatch)")
    head = ("atoms", "tw send", "bare send", "ratio", "tw recv", "bare recv", "ratio")
    print("{:>6} {:>8} {:>9} {:>6} {:>8} {:>9} {:>6}".format(*head))
    for r in result["cpu_per_frame"]:
        print(
            f"{r['atoms']:>6} {r['tw_send_us']:>8.1f} {r['bare_send_us']:>9.1f} "
            f"{r['send_ratio']:>6.2f} {r['tw_recv_us']:>8.1f} {r['bare_recv_us']:>9.1f} "
            f"{r['recv_ratio']:>6.2f}"
        )
    print()
    print(f"{'atoms':>6} {'encode us':>10} {'decode us':>10}")
    for r in result["codec"]:
        print(f"{r['atoms']:>6} {r['encode_us']:>10.1f} {r['decode_us']:>10.1f}")
    t = result["targets"]
    print()
    print(
        f"targets: min throughput ratio {t['throughput_ratio_min']:.2f} (>= 0.8), "
        f"p99 at 100 atoms {t['p99_ms_100_atoms_1000fps']:.3f} ms (< 0.5): "
        f"{'PASS' if t['pass'] else 'MISS'}"
    )


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--serve"]:
        return _serve()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames, fewer repeats")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    opts = parser.parse_args(args)
    result = run(quick=opts.quick)
    print_table(result)
    if opts.json:
        Path(opts.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
