"""ttRPC benchmark: containerd's Go client (go-ttrpc-peer bench) against the Go server and ours.

Usage: bench_ttrpc.py [--runs N] [--duration 5s] [--concurrency 1 16]
       bench_ttrpc.py --serve ADDRESS      (our server alone, answering grpc.Health/Check)

The Go side is our peer program on containerd's ttrpc (tests/peers/go-ttrpc, built into
the cache on first use). Both servers run as separate processes; runs alternate Go / ours,
each after a discarded warm-up. Per concurrency level it prints calls/s, p50/p99, each
server's CPU time per call (utime+stime from /proc, the steadiest figure on a shared machine)
and the ratios ours/Go.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peers.go_ttrpc import PeerBuildError, peer_binary

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def serve(address: str) -> None:
    from pykata.protocols import health_pb2
    from pykata.ttrpc import Server

    class Health:
        async def Check(self, request: health_pb2.CheckRequest) -> health_pb2.HealthCheckResponse:
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    async def main() -> None:
        server = Server()
        server.register(health_pb2.DESCRIPTOR.services_by_name["Health"], Health())
        await server.listen(address)
        await server.serve_forever()

    asyncio.run(main())


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def wait_for_socket(path: Path, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server for {path} did not come up")
        time.sleep(0.05)


def bench(peer: Path, address: str, concurrency: int, duration: str) -> dict[str, Any]:
    cmd = [str(peer), "bench", "--addr", address, "--concurrency", str(concurrency)]
    out = subprocess.run([*cmd, "--duration", duration], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"bench against {address} failed: {out.stdout}{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", metavar="ADDRESS", help="only run our server")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--duration", default="5s")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    try:
        peer = peer_binary()
    except PeerBuildError as e:
        raise SystemExit(str(e)) from e
    with tempfile.TemporaryDirectory(prefix="bench-ttrpc-") as tmp:
        sockets = {"go": Path(tmp) / "go.sock", "ours": Path(tmp) / "py.sock"}
        servers = {
            "go": subprocess.Popen(
                [str(peer), "serve", "--addr", f"unix://{sockets['go']}"],
                stderr=subprocess.DEVNULL,
            ),
            "ours": subprocess.Popen(
                [sys.executable, __file__, "--serve", f"unix://{sockets['ours']}"]
            ),
        }
        try:
            for side, process in servers.items():
                wait_for_socket(sockets[side], process)
            rows = measure(peer, sockets, servers, args.concurrency, args.runs, args.duration)
        finally:
            for process in servers.values():
                process.terminate()
                process.wait()
    report(rows, args)


def measure(
    peer: Path,
    sockets: dict[str, Path],
    servers: dict[str, subprocess.Popen[bytes]],
    levels: list[int],
    runs: int,
    duration: str,
) -> list[dict[str, Any]]:
    rows = []
    for concurrency in levels:
        for run in range(1, runs + 1):
            for side in ("go", "ours"):
                address = f"unix://{sockets[side]}"
                bench(peer, address, concurrency, "1s")
                cpu0 = cpu_seconds(servers[side].pid)
                result = bench(peer, address, concurrency, duration)
                cpu = cpu_seconds(servers[side].pid) - cpu0
                result.update(
                    side=side, run=run, cpu_us_per_call=cpu * 1e6 / max(result["calls"], 1)
                )
                print(json.dumps(result), flush=True)
                rows.append(result)
    return rows


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"\nttRPC bench: {time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, median of {args.runs} run(s) of {args.duration}"
    )
    print(
        f"{'conc':>4} {'side':>5} {'calls/s':>9} {'p50_us':>8} {'p99_us':>8} {'errors':>6} "
        f"{'cpu_us/call':>11}"
    )
    keys = ("calls_per_s", "p50_us", "p99_us", "errors", "cpu_us_per_call")
    for concurrency in args.concurrency:
        med = {}
        for side in ("go", "ours"):
            mine = [r for r in rows if r["concurrency"] == concurrency and r["side"] == side]
            med[side] = m = {k: statistics.median(r[k] for r in mine) for k in keys}
            print(
                f"{concurrency:>4} {side:>5} {m['calls_per_s']:>9.0f} {m['p50_us']:>8.1f} "
                f"{m['p99_us']:>8.1f} {m['errors']:>6.0f} {m['cpu_us_per_call']:>11.1f}"
            )
        go, ours = med["go"], med["ours"]
        print(
            f"{'':>10} ours/go: calls/s {ours['calls_per_s'] / go['calls_per_s']:.2f}, "
            f"server CPU per call {ours['cpu_us_per_call'] / go['cpu_us_per_call']:.2f}"
        )


if __name__ == "__main__":
    main()
