"""Run the vhost-user-vsock back-end as its own process.

    python -m pykata.host.vsock --socket vhost.sock --uds-path vsock.sock --guest-cid 3

A CONNECT the guest cannot answer yet (vsock not up, port not listening) is held and
retried for up to --connect-timeout seconds; 0 refuses it at once.

Prints ``READY`` on stdout once both sockets listen; exits cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys

from pykata.host.vsock.muxer import HostStream, VsockMuxer
from pykata.host.vsock.pending import DEFAULT_CONNECT_TIMEOUT
from pykata.host.vsock.vhost_user import Listener


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pykata.host.vsock", description=__doc__)
    parser.add_argument("--socket", required=True, help="vhost-user socket QEMU connects to")
    parser.add_argument("--uds-path", required=True, help="hybrid vsock socket for host clients")
    parser.add_argument("--guest-cid", type=int, default=3, help="the guest's CID (>= 3)")
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=DEFAULT_CONNECT_TIMEOUT,
        metavar="SECONDS",
        help="hold a CONNECT until the guest accepts it, at most this long "
        "(default %(default)g; 0: refuse at once when the guest cannot answer)",
    )
    parser.add_argument("--verbose", action="store_true", help="log every session event")
    args = parser.parse_args(argv)
    if args.guest_cid < 3:
        parser.error("--guest-cid must be 3 or more (0-2 are reserved)")
    if not args.connect_timeout >= 0:
        parser.error("--connect-timeout must be 0 or more")
    return args


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    muxer = VsockMuxer(args.guest_cid, args.uds_path, args.connect_timeout)
    for path in (args.socket, args.uds_path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    server = await loop.create_unix_server(lambda: HostStream(muxer, None), args.uds_path)
    listener = Listener(args.socket, muxer, 2, loop)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("READY", flush=True)
    try:
        await stop.wait()
    finally:
        listener.close()
        server.close()
        muxer.close()
        for path in (args.socket, args.uds_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
