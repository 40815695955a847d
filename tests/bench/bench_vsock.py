"""vsock benchmark: one stream through our vhost-user-vsock back-end vs a unix socket pair.

Usage: bench_vsock.py [--size-mb 200] [--runs 3]

Boots the vsock test guest (tests/vm/guest_echo, TCG) and streams zeros host -> guest
(port 5004, discard) and guest -> host (port 5005, zeros) over the hybrid vsock socket; the
peer figure is the same client code over a plain unix socket pair to a forked process
doing the same job. Prints the median MB/s of each, the ratio, and the back-end's CPU time
per GiB moved (utime+stime from /proc): the cost of doing this in Python.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "vm"))

from guest_echo.build import build_guest  # noqa: E402

from pykata.host.vm.runner import VM  # noqa: E402

CHUNK = 1 << 20
ZEROS = bytes(CHUNK)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def send_zeros(sock: socket.socket, size: int) -> None:
    view = memoryview(ZEROS)
    left = size
    while left:
        n = min(left, CHUNK)
        sock.sendall(view[:n])
        left -= n


def drain(sock: socket.socket) -> int:
    buf = bytearray(CHUNK)
    total = 0
    while n := sock.recv_into(buf):
        total += n
    return total


def upload(sock: socket.socket, size: int) -> None:
    send_zeros(sock, size)
    sock.shutdown(socket.SHUT_WR)
    reply = sock.makefile("rb").readline()
    assert int(reply) == size, reply


def download(sock: socket.socket, size: int) -> None:
    sock.sendall(f"{size}\n".encode())
    assert drain(sock) == size


def peer_serve(sock: socket.socket, role: str) -> None:
    """What the guest's discard/zeros services do, in a forked process."""
    if role == "discard":
        total = drain(sock)
        sock.sendall(f"{total}\n".encode())
    else:
        send_zeros(sock, int(sock.makefile("rb").readline()))
    sock.close()


def socketpair_run(job: Callable[[socket.socket, int], None], role: str, size: int) -> float:
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        ours.close()
        peer_serve(theirs, role)
        os._exit(0)
    theirs.close()
    t0 = time.perf_counter()
    job(ours, size)
    elapsed = time.perf_counter() - t0
    ours.close()
    os.waitpid(pid, 0)
    return elapsed


def vsock_run(vm: VM, job: Callable[[socket.socket, int], None], port: int, size: int) -> float:
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(vm.hybrid_socket))
    sock.sendall(f"CONNECT {port}\n".encode())
    line = b""
    while not line.endswith(b"\n"):
        line += sock.recv(1)
    assert line.startswith(b"OK "), line
    t0 = time.perf_counter()
    job(sock, size)
    elapsed = time.perf_counter() - t0
    sock.close()
    return elapsed


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


async def bench(size: int, runs: int) -> None:
    guest = build_guest()
    directions = [
        ("host -> guest", upload, 5004, "discard"),
        ("guest -> host", download, 5005, "zeros"),
    ]
    async with VM(guest.kernel, guest.initrd, memory_mib=512, accel="tcg") as vm:
        t0 = time.perf_counter()
        await vm.wait_console("guest-echo: ready", within=180)
        await vm.wait_port(5004)
        print(f"guest up in {time.perf_counter() - t0:.1f}s (TCG); {runs} runs of {size >> 20} MiB")
        backend = vm.pids["vsock"]
        columns = ("direction", "vsock MB/s", "unix MB/s", "ratio", "back-end CPU s/GiB")
        print("{:<14} {:>11} {:>10} {:>7} {:>19}".format(*columns))
        for name, job, port, role in directions:
            vs, ux, cpu = [], [], []
            for _ in range(runs):
                c0 = cpu_seconds(backend)
                vs.append(size / await asyncio.to_thread(vsock_run, vm, job, port, size) / 1e6)
                cpu.append((cpu_seconds(backend) - c0) / (size / (1 << 30)))
                ux.append(size / socketpair_run(job, role, size) / 1e6)
            v, u = statistics.median(vs), statistics.median(ux)
            print(f"{name:<14} {v:>11.1f} {u:>10.1f} {v / u:>7.3f} {statistics.median(cpu):>19.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(bench(args.size_mb << 20, args.runs))


if __name__ == "__main__":
    main()
