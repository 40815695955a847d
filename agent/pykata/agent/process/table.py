"""The processes of one container, from exec until the host has read their output to the end.

This is the one owner of a process's output lifecycle. A process is *live* from exec until a
WaitProcess has its exit status; after that the host may still read what it wrote, so the
process stays here, *draining*, and is released (fds closed) only once every stream being
read has told its reader EOF. Releasing earlier would answer a read racing WaitProcess with
NOT_FOUND instead of EOF.
"""

from __future__ import annotations

from typing import Any

from pykata.agent.errors import InvalidArgument
from pykata.agent.process.process import Process
from pykata.agent.process.stdio import OutputStream

# Bounds a single ReadStdout/ReadStderr answer (the host asks for 32 KiB at a time).
MAX_READ = 4 << 20


class ProcessTable:
    def __init__(self) -> None:
        self._live: dict[str, Process] = {}
        self._draining: dict[str, Process] = {}
        self._closed = False

    def __contains__(self, exec_id: str) -> bool:
        return exec_id in self._live

    def add(self, process: Process) -> None:
        self._live[process.exec_id] = process

    def discard(self, process: Process) -> None:
        """Forget a process that never started (its exec failed)."""
        if self._live.get(process.exec_id) is process:
            del self._live[process.exec_id]

    def live(self, exec_id: str) -> Process | None:
        return self._live.get(exec_id)

    def live_processes(self) -> list[Process]:
        return list(self._live.values())

    def readable(self, exec_id: str) -> Process | None:
        """The process whose output to read: a live one, or a waited-for one still draining."""
        return self._live.get(exec_id) or self._draining.get(exec_id)

    async def waited(self, process: Process) -> None:
        """A WaitProcess has the exit status: the process is no longer live, and is released
        now if nobody has output left to read, else once its reader was told EOF."""
        self.discard(process)
        if process.output_drained or self._closed:
            await self._release(process)
            return
        if process.stdin is not None:
            process.stdin.release()
        self._draining[process.exec_id] = process

    async def read(self, process: Process, stream: OutputStream, size: int) -> bytes:
        """Up to ``size`` bytes of ``stream`` (one of the process's), b"" at EOF; the read
        that tells a draining process's last reader EOF releases the process."""
        if size <= 0:
            raise InvalidArgument("read length must be positive")
        data = await stream.read(min(size, MAX_READ))
        if not data and self._draining.get(process.exec_id) is process and process.output_drained:
            await self._release(process)
        return data

    def all(self) -> list[Process]:
        """Live and draining processes."""
        return [*self._live.values(), *self._draining.values()]

    def snapshot(self) -> dict[str, Any]:
        return {
            "live": [p.snapshot() for p in self._live.values()],
            "draining": [p.snapshot() for p in self._draining.values()],
            "closed": self._closed,
        }

    @classmethod
    def restored(cls, state: dict[str, Any], processes: dict[str, Process]) -> ProcessTable:
        """``processes``: the restored ones by exec id (a container's init is shared)."""
        table = cls()
        table._live = {p["exec_id"]: processes[p["exec_id"]] for p in state["live"]}
        table._draining = {p["exec_id"]: processes[p["exec_id"]] for p in state["draining"]}
        table._closed = bool(state["closed"])
        return table

    async def release_all(self) -> None:
        """Release every process, live or draining, and any waited for from now on."""
        self._closed = True
        for process in [*self._live.values(), *self._draining.values()]:
            await self._release(process)

    async def _release(self, process: Process) -> None:
        self.discard(process)
        if self._draining.get(process.exec_id) is process:
            del self._draining[process.exec_id]
        await process.release()
