"""vsock benchmark: a client that redials like the Kata Go shim, while the guest boots.

Usage: bench_vsock_dials.py [--runs 2] [--port 5000]

Boots the vsock test guest (tests/vm/guest_echo, TCG; its listeners start after boot) and,
from QEMU start, runs a client that behaves like containerd-shim-kata-v2: connect to the
hybrid socket, ``CONNECT <port>``, and on EOF redial at once, until the first ``OK``. It
does so against our back-end with ``--connect-timeout 0`` (refuse at once: the old
behaviour) and with its default (hold the CONNECT until the guest accepts), in the same
run, alternating which goes first. Prints, per boot and as medians: dials until OK,
seconds from QEMU start until OK, the back-end's CPU seconds over that time (utime+stime
from /proc) and the client's own CPU seconds; then the ratio refuse / hold.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "vm"))
sys.path.insert(0, str(ROOT / "tests" / "bench"))

from bench_vsock import CLOCK_TICKS, cpu_seconds  # noqa: E402
from guest_echo.build import build_guest  # noqa: E402

from pykata.host.vm.runner import VM  # noqa: E402
from pykata.host.vsock.pending import DEFAULT_CONNECT_TIMEOUT  # noqa: E402

GIVE_UP = 300.0  # seconds; a boot that never answers fails the benchmark


@dataclass
class Result:
    dials: int
    seconds: float
    backend_cpu: float
    client_cpu: float


def redial_until_ok(path: str, port: int, t0: float) -> tuple[int, float, float]:
    """Dial, CONNECT, read the reply; on EOF (or a failed connect) dial again at once.
    Returns (dials, seconds since ``t0`` at OK, this thread's CPU seconds)."""
    c0 = time.thread_time()
    request = f"CONNECT {port}\n".encode()
    dials = 0
    while time.perf_counter() - t0 < GIVE_UP:
        dials += 1
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            try:
                sock.connect(path)
                sock.sendall(request)
                reply = b""
                while not reply.endswith(b"\n") and (block := sock.recv(64)):
                    reply += block
            except OSError:
                continue
            if reply.startswith(b"OK "):
                return dials, time.perf_counter() - t0, time.thread_time() - c0
    raise SystemExit(f"no OK from guest port {port} within {GIVE_UP:g}s ({dials} dials)")


async def boot_and_dial(kernel: Path, initrd: Path, hold: float | None, port: int) -> Result:
    vm = VM(kernel, initrd, memory_mib=512, accel="tcg", vsock_connect_timeout=hold)
    async with vm:  # returns once QEMU is started (the back-end listens already)
        t0 = time.perf_counter()
        backend = vm.pids["vsock"]
        cpu0 = cpu_seconds(backend)
        dials, seconds, client_cpu = await asyncio.to_thread(
            redial_until_ok, str(vm.hybrid_socket), port, t0
        )
        return Result(dials, seconds, cpu_seconds(backend) - cpu0, client_cpu)


def row(label: str, r: Result) -> str:
    return (
        f"{label:<26} {r.dials:>9} {r.seconds:>12.1f} {r.backend_cpu:>15.3f} {r.client_cpu:>14.3f}"
    )


def median(results: list[Result]) -> Result:
    return Result(
        round(statistics.median(r.dials for r in results)),
        statistics.median(r.seconds for r in results),
        statistics.median(r.backend_cpu for r in results),
        statistics.median(r.client_cpu for r in results),
    )


async def bench(runs: int, port: int) -> None:
    guest = build_guest()
    modes: dict[str, float | None] = {
        "refuse (--connect-timeout 0)": 0.0,
        f"hold (default {DEFAULT_CONNECT_TIMEOUT:g} s)": None,
    }
    results: dict[str, list[Result]] = {name: [] for name in modes}
    print(f"guest port {port}, {runs} run(s) of each mode, TCG")
    header = ("mode", "dials", "s until OK", "back-end CPU s", "client CPU s")
    print("{:<26} {:>9} {:>12} {:>15} {:>14}".format(*header))
    for run in range(runs):
        order = list(modes.items()) if run % 2 == 0 else list(reversed(modes.items()))
        for name, hold in order:
            result = await boot_and_dial(guest.kernel, guest.initrd, hold, port)
            results[name].append(result)
            print(row(name, result), flush=True)
    (old_name, new_name) = modes
    old, new = median(results[old_name]), median(results[new_name])
    print("medians:")
    print(row(old_name, old))
    print(row(new_name, new))
    # /proc counts CPU time in clock ticks: below one tick, the ratio is a lower bound.
    tick = 1 / CLOCK_TICKS
    cpu_ratio = old.backend_cpu / max(new.backend_cpu, tick)
    print(
        f"ratio refuse / hold: dials {old.dials / new.dials:.0f}x, "
        f"s until OK {old.seconds / new.seconds:.2f}x, "
        f"back-end CPU {'>= ' if new.backend_cpu < tick else ''}{cpu_ratio:.0f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--port", type=int, default=5000, help="a guest-echo port")
    args = parser.parse_args()
    asyncio.run(bench(args.runs, args.port))


if __name__ == "__main__":
    main()
