"""Debug console: a pty shell relayed over a stream socket (the vsock port's sessions)."""

from __future__ import annotations

import asyncio
import socket

from pykata.agent.console import pty_session
from pykata.agent.reaper import Reaper


async def test_shell_session_round_trip() -> None:
    reaper = Reaper()
    reaper.start()
    ours, theirs = socket.socketpair()
    try:
        session = asyncio.ensure_future(pty_session(reaper, theirs))
        loop = asyncio.get_running_loop()
        ours.setblocking(False)
        await loop.sock_sendall(ours, b"echo pykata-$((40+2)); tty; exit 3\n")
        output = b""
        async with asyncio.timeout(20):
            while chunk := await loop.sock_recv(ours, 4096):
                output += chunk
            await session
        assert b"pykata-42" in output
        assert b"/dev/pts/" in output  # the shell's stdin is its terminal
    finally:
        ours.close()
        reaper.stop()


async def test_client_hangup_ends_the_shell() -> None:
    reaper = Reaper()
    reaper.start()
    ours, theirs = socket.socketpair()
    try:
        session = asyncio.ensure_future(pty_session(reaper, theirs))
        await asyncio.sleep(0.2)
        ours.close()
        async with asyncio.timeout(20):
            await session  # the shell got SIGHUP and was reaped
    finally:
        reaper.stop()
