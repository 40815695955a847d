"""One process of a container (its init or an exec): pid, stdio, exit status."""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass

from pykata.agent import log
from pykata.agent.errors import FailedPrecondition, Unavailable
from pykata.agent.process.stdio import InputStream, OutputStream, set_pipe_size, set_window_size
from pykata.agent.reaper import Reaper, exit_code

logger = log.get("process")

# How long a pty may take to hand its last output to the master after the writer exited.
PTY_FLUSH_GRACE = 0.5


@dataclass
class ChildStdio:
    """The fds the OCI runtime passes to the process (None: it gets a pty instead)."""

    stdin: int | None
    stdout: int | None
    stderr: int | None

    def close(self) -> None:
        for fd in (self.stdin, self.stdout, self.stderr):
            if fd is not None:
                os.close(fd)


class Process:
    def __init__(self, exec_id: str, *, init: bool, terminal: bool) -> None:
        self.exec_id = exec_id
        self.init = init
        self.terminal = terminal
        self.pid = 0
        self.stdin: InputStream | None = None
        self.stdout: OutputStream | None = None
        self.stderr: OutputStream | None = None
        self.tty_master: int | None = None
        self.exit_status: int | None = None
        self._exited = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None

    def pipes(self, pipe_size: int) -> ChildStdio:
        """Create the stdio pipes; the agent keeps its ends, the child's ends are returned."""
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        for fd in (in_w, out_r, err_r):
            set_pipe_size(fd, pipe_size)
        self.stdin = InputStream(in_w)
        self.stdout = OutputStream(out_r)
        self.stderr = OutputStream(err_r)
        return ChildStdio(in_r, out_w, err_w)

    def attach_tty(self, master: int) -> None:
        """Use the pty master the runtime handed over: stdout and stderr are merged on it."""
        self.tty_master = master
        self.stdin = InputStream(master, owns_fd=False, tty=True)
        self.stdout = OutputStream(master)

    def started(self, pid: int, reaper: Reaper) -> None:
        self.pid = pid
        self._watcher = asyncio.ensure_future(self._watch(reaper.watch(pid)))

    async def _watch(self, status_fut: asyncio.Future[int]) -> None:
        status = await status_fut
        self.exit_status = exit_code(status)
        logger.info("process exited", extra={"exec_id": self.exec_id, "pid": self.pid})
        grace = PTY_FLUSH_GRACE if self.tty_master is not None else 0.0
        await asyncio.gather(
            *(s.finish(grace) for s in (self.stdout, self.stderr) if s is not None)
        )
        self._exited.set()

    @property
    def exited(self) -> bool:
        return self._exited.is_set()

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.exit_status is not None
        return self.exit_status

    @property
    def output_drained(self) -> bool:
        return all(s.drained for s in (self.stdout, self.stderr) if s is not None)

    def catches(self, sig: int) -> bool:
        """Whether the process has a handler for ``sig`` (SigCgt in /proc/<pid>/status)."""
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("SigCgt:"):
                        return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
        except FileNotFoundError:  # already gone
            pass
        return False

    async def write_stdin(self, data: bytes) -> int:
        """Write all of ``data``; empty ``data`` closes stdin (the host's way to send EOF)."""
        if self.stdin is None:
            raise FailedPrecondition("the process has no stdin")
        if not data:
            await self.stdin.close()
            return 0
        try:
            return await self.stdin.write(data)
        except BrokenPipeError as exc:
            raise FailedPrecondition(f"stdin of {self.exec_id} is closed") from exc

    async def close_stdin(self) -> None:
        if self.stdin is not None:
            await self.stdin.close()

    def resize_tty(self, rows: int, columns: int) -> None:
        if self.tty_master is None:
            raise Unavailable("no tty")
        if self.exited:
            raise FailedPrecondition("the process has exited")
        set_window_size(self.tty_master, rows, columns)

    def signal(self, sig: int) -> None:
        """Send ``sig``; a process that is already gone is not an error (as Kata does)."""
        if self.pid <= 0 or self.exit_status is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def close_stdio(self) -> None:
        if self.stdin is not None:
            self.stdin.release()
        for stream in (self.stdout, self.stderr):
            if stream is not None:
                stream.close()

    async def release(self) -> None:
        """Forget the process: stop watching it and close every fd the agent holds for it."""
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        self.close_stdio()
