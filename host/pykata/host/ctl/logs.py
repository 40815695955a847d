"""`kata-agent-ctl logs`: the agent's JSON log lines, from the VM's serial console or, when
the guest runs with `agent.log_vport=PORT`, from that vsock port (the agent then sends them
there instead, as Kata's agent does, starting with those queued since boot)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from pykata.host.ctl.errors import ConnectionFailure, UsageError
from pykata.ttrpc.addresses import parse_address
from pykata.ttrpc.dialing import dial
from pykata.ttrpc.errors import Unavailable

FOLLOW_INTERVAL = 0.2
CHUNK = 64 * 1024


async def print_console(path: Path, follow: bool) -> None:
    with path.open("rb") as log:
        while True:
            chunk = log.read(CHUNK)
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
            elif not follow:
                return
            else:
                await asyncio.sleep(FOLLOW_INTERVAL)


async def print_vsock_log(agent_address: str, port: int, connect_timeout: float) -> None:
    """Until the guest closes the stream (it powers off) or we are interrupted."""
    scheme = agent_address.partition("://")[0]
    if scheme not in ("vsock", "hvsock"):
        raise UsageError(f"--vsock-port needs a vsock or hvsock target, not {agent_address}")
    # Same guest, other port: only the address's last ":PORT" changes.
    address = f"{agent_address.rpartition(':')[0]}:{port}"
    try:
        sock = await dial(parse_address(address), connect_timeout)
    except Unavailable as exc:
        raise ConnectionFailure(f"no log stream on {address}: {exc}") from None
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        while chunk := await reader.read(CHUNK):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
    finally:
        writer.close()
