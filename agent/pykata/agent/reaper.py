"""The agent reaps every child: it is PID 1 or a child subreaper.

Orphans (a container's init once ``runc create`` has exited, daemonised grandchildren) are
re-parented to us, so one ``waitpid(-1)`` loop collects every exit status and hands it to
whoever asked for that pid. asyncio's own subprocess support would race with this loop,
so children are spawned with ``os.posix_spawn`` and awaited through :meth:`Reaper.watch`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import OrderedDict
from collections.abc import Mapping

from pykata.agent.fdready import writable

# Statuses of pids nobody watched yet. Kept so that a watch() right after the spawn cannot
# miss a fast exit; bounded because most orphans (daemonised grandchildren) are never asked.
UNCLAIMED_LIMIT = 4096


def exit_code(status: int) -> int:
    """Shell-style exit code of a raw wait status: the code, or 128 + signal number."""
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    raise ValueError(f"wait status {status:#x} is neither an exit nor a signal death")


class Reaper:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[int, asyncio.Future[int]] = {}
        self._unclaimed: OrderedDict[int, int] = OrderedDict()

    def start(self) -> None:
        """Reap on SIGCHLD from now on; must run inside the event loop."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_signal_handler(signal.SIGCHLD, self.reap)
        self.reap()

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGCHLD)
            self._loop = None

    def reap(self) -> None:
        """Collect every exited child without blocking."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._deliver(pid, status)

    def _deliver(self, pid: int, status: int) -> None:
        fut = self._waiters.pop(pid, None)
        if fut is not None:
            if not fut.done():
                fut.set_result(status)
            return
        self._unclaimed[pid] = status
        while len(self._unclaimed) > UNCLAIMED_LIMIT:
            self._unclaimed.popitem(last=False)

    def snapshot(self) -> list[list[int]]:
        """Statuses collected and not asked for yet, (pid, status) oldest first."""
        return [[pid, status] for pid, status in self._unclaimed.items()]

    def restore(self, unclaimed: list[list[int]]) -> None:
        for pid, status in unclaimed:
            self._unclaimed[pid] = status

    def watch(self, pid: int) -> asyncio.Future[int]:
        """A future resolving to the raw wait status of ``pid`` (several callers share it)."""
        existing = self._waiters.get(pid)
        if existing is not None:
            return existing
        loop = self._loop or asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        status = self._unclaimed.pop(pid, None)
        if status is not None:
            fut.set_result(status)
        else:
            self._waiters[pid] = fut
        return fut

    def spawn(
        self,
        argv: list[str],
        *,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        env: Mapping[str, str] | None = None,
        setsid: bool = False,
        executable: str | None = None,
    ) -> int:
        """Start ``argv`` with the given fds as its stdio (None: /dev/null); returns the pid.
        ``executable``: the file to run instead of ``argv[0]`` looked up in PATH.

        Only the three stdio fds are inherited: everything else the agent holds is
        close-on-exec.
        """
        actions: list[tuple[int, ...]] = []
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        try:
            for target, fd in ((0, stdin), (1, stdout), (2, stderr)):
                actions.append((os.POSIX_SPAWN_DUP2, null if fd is None else fd, target))
            spawn = os.posix_spawnp if executable is None else os.posix_spawn
            return spawn(
                argv[0] if executable is None else executable,
                argv,
                dict(os.environ if env is None else env),
                file_actions=actions,
                setsid=setsid,
                setsigdef=(signal.SIGCHLD, signal.SIGPIPE, signal.SIGINT, signal.SIGTERM),
                setsigmask=(),
            )
        finally:
            os.close(null)

    async def run(
        self,
        argv: list[str],
        *,
        input: bytes | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (the agent-wide interface)
        executable: str | None = None,
    ) -> tuple[int, bytes, bytes]:
        """Run ``argv`` to completion: (exit code, stdout, stderr).

        Output is collected until the child exits, then whatever is buffered is drained:
        a grandchild that keeps the pipes open cannot hang the caller. On timeout the child
        is killed and TimeoutError raised.
        """
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            pid = self.spawn(
                argv, stdin=in_r, stdout=out_w, stderr=err_w, env=env, executable=executable
            )
        except BaseException:
            for fd in (in_r, in_w, out_r, out_w, err_r, err_w):
                os.close(fd)
            raise
        for fd in (in_r, out_w, err_w):
            os.close(fd)
        status_fut = self.watch(pid)
        out = _Collector(out_r)
        err = _Collector(err_r)
        feeder = asyncio.ensure_future(_feed(in_w, input or b""))
        try:
            async with asyncio.timeout(timeout):
                status = await asyncio.shield(status_fut)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            await status_fut
            raise TimeoutError(f"{argv[0]} did not finish within {timeout}s") from None
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
            stdout_data = out.finish()
            stderr_data = err.finish()
        return exit_code(status), stdout_data, stderr_data


class _Collector:
    """Accumulates a non-blocking pipe's data via the loop until finish()."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._chunks: list[bytes] = []
        self._open = True
        os.set_blocking(fd, False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._read)

    def _read(self) -> None:
        while self._open:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return
            if not data:
                self._close()
                return
            self._chunks.append(data)

    def _close(self) -> None:
        if self._open:
            self._open = False
            self._loop.remove_reader(self._fd)
            os.close(self._fd)

    def finish(self) -> bytes:
        self._read()
        self._close()
        return b"".join(self._chunks)


async def _feed(fd: int, data: bytes) -> None:
    """Write ``data`` to a pipe without blocking the loop, then close it."""
    os.set_blocking(fd, False)
    view = memoryview(data)
    try:
        while view:
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                await writable(fd)
                continue
            except BrokenPipeError:
                return
            view = view[n:]
    finally:
        os.close(fd)
