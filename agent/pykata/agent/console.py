"""Debug console (``agent.debug_console``): a shell on the VM console, or with
``agent.debug_console_vport`` a pty shell for every vsock connection on that port.

The shell is spawned with :class:`subprocess.Popen` (never waited on by it: the agent's
reaper collects the exit) so that it can take the terminal as its controlling tty.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import socket
import subprocess
import termios

from pykata.agent import log
from pykata.agent.reaper import Reaper

logger = log.get("debug-console")

SHELL = "/bin/sh"
CONSOLE = "/dev/console"
RESPAWN_DELAY = 1.0
DRAIN_TIMEOUT = 1.0


def _take_tty() -> None:
    # Runs in the child between fork and exec: new session, stdin becomes its terminal.
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _spawn_shell(tty_fd: int) -> subprocess.Popen[bytes]:
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM": "vt100"}
    return subprocess.Popen(
        [SHELL, "-i"],
        stdin=tty_fd,
        stdout=tty_fd,
        stderr=tty_fd,
        env=env,
        preexec_fn=_take_tty,
        cwd="/",
    )


async def _wait_shell(reaper: Reaper, child: subprocess.Popen[bytes]) -> int:
    status = await reaper.watch(child.pid)
    child.returncode = status  # the reaper owns the exit: keep Popen from waiting itself
    return status


async def serve_console(reaper: Reaper) -> None:
    """Keep a shell running on the console (respawned when it exits)."""
    while True:
        try:
            fd = os.open(CONSOLE, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as exc:
            logger.error("cannot open console", extra={"error": str(exc)})
            return
        try:
            await _wait_shell(reaper, _spawn_shell(fd))
        except OSError as exc:
            logger.error("cannot start debug shell", extra={"error": str(exc)})
            return
        finally:
            os.close(fd)
        await asyncio.sleep(RESPAWN_DELAY)


async def pty_session(reaper: Reaper, conn: socket.socket) -> None:
    """One shell on a fresh pty, its bytes relayed to and from ``conn`` until it exits."""
    loop = asyncio.get_running_loop()
    master, slave = pty.openpty()
    os.set_inheritable(master, False)
    os.set_blocking(master, False)
    conn.setblocking(False)
    try:
        shell = asyncio.ensure_future(_wait_shell(reaper, _spawn_shell(slave)))
        os.close(slave)
        slave = -1
        to_shell = asyncio.ensure_future(_relay_socket(loop, conn, master))
        from_shell = asyncio.ensure_future(_relay_pty(loop, master, conn))
        done, _ = await asyncio.wait(
            {shell, to_shell, from_shell}, return_when=asyncio.FIRST_COMPLETED
        )
        if shell in done:
            # What the shell printed last may still sit in the pty: relay it (EIO ends it).
            with contextlib.suppress(TimeoutError, OSError):
                await asyncio.wait_for(asyncio.shield(from_shell), DRAIN_TIMEOUT)
        for task in (to_shell, from_shell):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task
        if shell not in done:
            # The client went away: hang up the terminal, the shell gets SIGHUP.
            os.close(master)
            master = -1
            await shell
    finally:
        for fd in (master, slave):
            if fd >= 0:
                os.close(fd)
        conn.close()


async def _relay_socket(loop: asyncio.AbstractEventLoop, conn: socket.socket, master: int) -> None:
    while True:
        data = await loop.sock_recv(conn, 4096)
        if not data:
            return
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(master, view) :]
            except BlockingIOError:
                await asyncio.sleep(0.01)


async def _relay_pty(loop: asyncio.AbstractEventLoop, master: int, conn: socket.socket) -> None:
    readable = asyncio.Event()
    loop.add_reader(master, readable.set)
    try:
        while True:
            await readable.wait()
            readable.clear()
            try:
                data = os.read(master, 4096)
            except BlockingIOError:
                continue
            except OSError:  # EIO: every slave fd closed, the shell is gone
                return
            if not data:
                return
            await loop.sock_sendall(conn, data)
    finally:
        loop.remove_reader(master)


async def serve_vsock(reaper: Reaper, port: int) -> None:
    loop = asyncio.get_running_loop()
    listener = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        listener.bind((socket.VMADDR_CID_ANY, port))
        listener.listen(4)
    except OSError as exc:
        listener.close()
        logger.error("cannot listen for debug console", extra={"port": port, "error": str(exc)})
        return
    listener.setblocking(False)
    sessions: set[asyncio.Task[None]] = set()
    with listener:
        while True:
            conn, _ = await loop.sock_accept(listener)
            task = asyncio.ensure_future(pty_session(reaper, conn))
            sessions.add(task)
            task.add_done_callback(sessions.discard)


async def serve(reaper: Reaper, vport: int) -> None:
    try:
        if vport:
            await serve_vsock(reaper, vport)
        else:
            await serve_console(reaper)
    except Exception:
        logger.exception("debug console stopped")
