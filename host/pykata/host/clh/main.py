"""kata-clh: a Cloud Hypervisor stand-in for Kata's clh driver, running the VM with QEMU.

    kata-clh --api-socket /run/vc/vm/<id>/clh-api.sock [-v]

Serves the Cloud Hypervisor REST API on the socket until ``vmm.shutdown`` or SIGTERM;
QEMU and the vsock back-end it starts die with it. Beside the socket: clh-launcher.log
(this process), clh-console.log (the guest's serial port), clh-qemu.log, clh-vsock.log.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from pykata.host.clh.api import Api
from pykata.host.clh.http import Server
from pykata.host.clh.machine import QemuMachine

log = logging.getLogger("pykata.host.clh")

SHUTDOWN_BUDGET = 2.5  # the shim SIGKILLs us 3 s after vmm.shutdown


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kata-clh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--api-socket", required=True, type=Path, help="unix socket to serve on")
    parser.add_argument("-v", action="count", default=0, dest="verbose", help="more logging")
    parser.add_argument("--seccomp", help="accepted for Cloud Hypervisor compatibility; unused")
    parser.add_argument("--log-file", type=Path, help="log here instead of stderr")
    parser.add_argument(
        "--accel",
        choices=["auto", "kvm", "tcg"],
        default=os.environ.get("PYKATA_CLH_ACCEL", "auto"),
        help="auto: KVM when a cached probe says it works, else TCG (env PYKATA_CLH_ACCEL)",
    )
    parser.add_argument(
        "--state-dir", type=Path, help="logs and helper sockets (default: the API socket's folder)"
    )
    return parser.parse_args(argv)


def setup_logging(args: argparse.Namespace, state_dir: Path) -> None:
    fmt = logging.Formatter("%(asctime)s kata-clh[%(process)d] %(levelname)s %(message)s")
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    stream: logging.Handler = (
        logging.FileHandler(args.log_file) if args.log_file else logging.StreamHandler(sys.stderr)
    )
    stream.setLevel(
        logging.DEBUG if args.verbose >= 2 else logging.INFO if args.verbose else logging.WARNING
    )
    # Always a log to point to, whatever the shim does with our stderr.
    keep = logging.FileHandler(state_dir / "clh-launcher.log")
    keep.setLevel(logging.DEBUG if args.verbose >= 2 else logging.INFO)
    for handler in (stream, keep):
        handler.setFormatter(fmt)
        root.addHandler(handler)


async def serve(args: argparse.Namespace, state_dir: Path) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    machine = QemuMachine(state_dir, args.accel)
    server = Server(args.api_socket, Api(machine, stop.set).handle)
    await server.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("serving the Cloud Hypervisor API on %s", args.api_socket)
    await stop.wait()
    log.info("shutting down")
    try:
        await asyncio.wait_for(machine.close(), SHUTDOWN_BUDGET)
    except TimeoutError:
        log.warning("helpers slow to stop: killing them")
        machine.kill()
    await server.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    state_dir = args.state_dir or args.api_socket.parent
    state_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(args, state_dir)
    asyncio.run(serve(args, state_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
