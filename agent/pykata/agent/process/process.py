"""One process of a container (its init or an exec): pid, stdio, exit status."""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from typing import Any

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
        self._status: asyncio.Future[int] | None = None

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
        self._status = reaper.watch(pid)
        self._watcher = asyncio.ensure_future(self._watch(self._status))

    async def _watch(self, status_fut: asyncio.Future[int]) -> None:
        status = await status_fut
        self.exit_status = exit_code(status)
        logger.info("process exited", extra={"exec_id": self.exec_id, "pid": self.pid})
        await self._finish_output()

    async def _finish_output(self) -> None:
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

    def snapshot(self) -> dict[str, Any]:
        """The process as a restored agent takes it over (upgrade/state.py)."""
        exit_status = self.exit_status
        if exit_status is None and self._status is not None and self._status.done():
            # Reaped, and the watcher not run yet: the status exists only here.
            exit_status = exit_code(self._status.result())
        return {
            "exec_id": self.exec_id,
            "init": self.init,
            "terminal": self.terminal,
            "pid": self.pid,
            "exit_status": exit_status,
            "exited": self.exited,
            "tty_master": self.tty_master,
            "stdin": None if self.stdin is None else self.stdin.snapshot(),
            "stdout": None if self.stdout is None else self.stdout.snapshot(),
            "stderr": None if self.stderr is None else self.stderr.snapshot(),
        }

    def fds(self) -> list[int]:
        """Every fd the agent holds for this process (they must survive the upgrade's exec)."""
        fds = [] if self.tty_master is None else [self.tty_master]
        if self.stdin is not None and self.stdin.fd is not None:
            fds.append(self.stdin.fd)
        for stream in (self.stdout, self.stderr):
            if stream is not None and not stream.closed:
                fds.append(stream.fd)
        return fds

    @classmethod
    def restored(cls, state: dict[str, Any], reaper: Reaper) -> Process:
        """Go on where the previous agent stopped: watch a live pid, or finish the output of
        one that exited meanwhile (its status was collected by the previous agent)."""
        process = cls(state["exec_id"], init=bool(state["init"]), terminal=bool(state["terminal"]))
        process.pid = int(state["pid"])
        process.tty_master = state["tty_master"]
        if state["stdin"] is not None:
            process.stdin = InputStream.restored(state["stdin"])
        if state["stdout"] is not None:
            process.stdout = OutputStream.restored(state["stdout"])
        if state["stderr"] is not None:
            process.stderr = OutputStream.restored(state["stderr"])
        if process.tty_master is not None:
            os.set_inheritable(process.tty_master, False)
        process.exit_status = state["exit_status"]
        if state["exited"]:
            process._exited.set()
        elif process.exit_status is not None:
            process._watcher = asyncio.ensure_future(process._finish_output())
        elif process.pid > 0:
            process.started(process.pid, reaper)
        return process

    async def release(self) -> None:
        """Forget the process: stop watching it and close every fd the agent holds for it."""
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        self.close_stdio()
