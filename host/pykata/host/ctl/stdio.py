"""Streaming one process's stdio through the agent, like a Kata shim does, and its exit code.

Output is pulled with ReadStdout/ReadStderr until the agent reports EOF (an empty read),
which it does once the process has exited and the pipe is drained; only then WaitProcess,
because the agent forgets a process (and its buffered output) once it has been waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Protocol

from pykata.host.ctl.session import Session
from pykata.host.ctl.tty import raw_mode, terminal_size
from pykata.protocols import agent_pb2
from pykata.ttrpc.errors import TtrpcError

READ_CHUNK = 64 * 1024
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Output(Protocol):
    def write(self, data: bytes, /) -> object: ...
    def flush(self) -> None: ...


class ProcessIO:
    """stdin is forwarded when asked (the local terminal then in raw mode when the process
    has one), else closed at once; output goes to our stdout/stderr unless given."""

    def __init__(
        self,
        session: Session,
        container_id: str,
        exec_id: str,
        *,
        terminal: bool,
        stdin: bool,
        stdout: Output | None = None,
        stderr: Output | None = None,
    ) -> None:
        self.session = session
        self.container_id = container_id
        self.exec_id = exec_id
        self.terminal = terminal
        self.stdin = stdin
        self.stdout: Output = stdout or sys.stdout.buffer
        self.stderr: Output = stderr or sys.stderr.buffer
        self.background: set[asyncio.Future[Any]] = set()
        self.interrupts = 0

    async def run(self) -> int:
        """Streams until the process exits and returns its exit code (128+N for signal N)."""
        loop = asyncio.get_running_loop()
        signals = [signal.SIGWINCH] if self.terminal else list(FORWARDED_SIGNALS)
        for signum in signals:
            loop.add_signal_handler(signum, self.on_signal, signum)
        feeder = asyncio.create_task(self.feed_stdin())
        try:
            raw = self.terminal and self.stdin
            with raw_mode(sys.stdin.fileno()) if raw else contextlib.nullcontext():
                if self.terminal:
                    await self.resize()
                pumps = [self.pump("ReadStdout", self.stdout)]
                if not self.terminal:
                    pumps.append(self.pump("ReadStderr", self.stderr))
                await asyncio.gather(*pumps)
                response = await self.session.agent(
                    "WaitProcess",
                    agent_pb2.WaitProcessRequest(
                        container_id=self.container_id, exec_id=self.exec_id
                    ),
                    agent_pb2.WaitProcessResponse,
                )
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
        return int(response.status)

    async def pump(self, method: str, out: Output) -> None:
        request = agent_pb2.ReadStreamRequest(
            container_id=self.container_id, exec_id=self.exec_id, len=READ_CHUNK
        )
        while True:
            response = await self.session.agent(method, request, agent_pb2.ReadStreamResponse)
            if not response.data:
                return
            out.write(response.data)
            out.flush()

    async def feed_stdin(self) -> None:
        try:
            if self.stdin:
                async for chunk in stdin_chunks():
                    await self.write_stdin(chunk)
            await self.close_stdin()
        except TtrpcError:
            # The process exited and took its stdin with it: like EPIPE, nothing to report.
            return

    async def write_stdin(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            response = await self.session.agent(
                "WriteStdin",
                agent_pb2.WriteStreamRequest(
                    container_id=self.container_id, exec_id=self.exec_id, data=bytes(view)
                ),
                agent_pb2.WriteStreamResponse,
            )
            view = view[response.len :]

    async def close_stdin(self) -> None:
        await self.session.agent_empty(
            "CloseStdin",
            agent_pb2.CloseStdinRequest(container_id=self.container_id, exec_id=self.exec_id),
        )

    async def resize(self) -> None:
        rows, columns = terminal_size(sys.stdout.fileno())
        if rows and columns:
            await self.session.agent_empty(
                "TtyWinResize",
                agent_pb2.TtyWinResizeRequest(
                    container_id=self.container_id, exec_id=self.exec_id, row=rows, column=columns
                ),
            )

    def on_signal(self, signum: int) -> None:
        if signum == signal.SIGWINCH:
            call: Awaitable[Any] = self.resize()
        else:
            # An init without a handler ignores SIGINT: a second Ctrl-C must still end it.
            if signum == signal.SIGINT:
                self.interrupts += 1
                signum = signal.SIGKILL if self.interrupts > 1 else signum
            call = self.session.agent_empty(
                "SignalProcess",
                agent_pb2.SignalProcessRequest(
                    container_id=self.container_id, exec_id=self.exec_id, signal=signum
                ),
            )
        task = asyncio.ensure_future(call)
        self.background.add(task)
        task.add_done_callback(self.signal_done)

    def signal_done(self, task: asyncio.Future[Any]) -> None:
        self.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Typically the process exited meanwhile; the exit code tells the rest.
            print(f"kata-agent-ctl: {task.exception()}", file=sys.stderr)


async def stdin_chunks() -> AsyncIterator[bytes]:
    fd = sys.stdin.fileno()
    if stat.S_ISREG(os.fstat(fd).st_mode):
        # Regular files never block, and epoll refuses them.
        while chunk := os.read(fd, READ_CHUNK):
            yield chunk
        return
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    blocking = os.get_blocking(fd)
    os.set_blocking(fd, False)
    loop.add_reader(fd, readable.set)
    try:
        while True:
            await readable.wait()
            readable.clear()
            try:
                chunk = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                continue
            if not chunk:
                return
            yield chunk
    finally:
        loop.remove_reader(fd)
        os.set_blocking(fd, blocking)
