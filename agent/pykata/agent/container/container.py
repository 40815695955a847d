"""A container in the sandbox: its bundle, runtime handle, processes, cgroup and storages."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from pykata.agent import log
from pykata.agent.blocking import bounded
from pykata.agent.cgroups import Cgroup, OomNotifier, open_cgroup
from pykata.agent.container.bundle import Bundle
from pykata.agent.container.runtime import STATE_ROOT, OciRuntime, RuntimeFailure
from pykata.agent.container.spec import process_defaults
from pykata.agent.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
)
from pykata.agent.process.process import Process
from pykata.agent.process.stdio import ConsoleSocket
from pykata.agent.process.table import ProcessTable
from pykata.agent.process.user import StringUser, resolve_process_user
from pykata.agent.reaper import Reaper
from pykata.agent.storage.manager import StorageManager

logger = log.get("container")
# Bundle removal touches the rootfs mount, which a dead share can hang forever.
BUNDLE_REMOVE_TIMEOUT = 10.0

# Bound on waiting for a started init to exec its program (steps of 2 ms: 2 s).
EXEC_WAIT_STEPS = 1000


class State(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


class Container:
    def __init__(
        self,
        container_id: str,
        bundle: Bundle,
        spec: dict[str, Any],
        runtime: OciRuntime,
        reaper: Reaper,
        storages: list[str],
        storage_manager: StorageManager,
        pipe_size: int,
    ) -> None:
        self.id = container_id
        self.bundle = bundle
        self.spec = spec
        self.runtime = runtime
        self.reaper = reaper
        self.storages = storages
        self.storage_manager = storage_manager
        self.pipe_size = pipe_size
        self.cgroup: Cgroup = open_cgroup(spec["linux"]["cgroupsPath"])
        self.state = State.CREATED
        self.init: Process | None = None
        self._processes = ProcessTable()
        self._oom_task: asyncio.Task[None] | None = None
        self._oom_notifier: OomNotifier | None = None
        self._init_tracker: asyncio.Future[None] | None = None
        # Set once the cgroup was checked absent and handed to the runtime to make: only a
        # cgroup the agent created is ever frozen, signalled or removed.
        self.owns_cgroup = False
        # Parent cgroups the agent made for its containers (the sandbox's record, shared by
        # its containers): emptied ones are removed with the last container below them.
        self.cgroup_parents: set[str] = set()
        # Teardown steps already done: a retried destroy continues after them.
        self._torn_down: set[str] = set()
        self._destroy_lock = asyncio.Lock()
        self.destroyed = False

    async def launch(self, exec_id: str) -> None:
        """``runtime create``: the init process exists and waits for start."""
        process = Process(exec_id, init=True, terminal=bool(self.spec["process"].get("terminal")))
        existing = self.cgroup.directories()
        if existing:
            raise InvalidArgument(
                f"linux.cgroupsPath {self.cgroup.path} names an existing cgroup ({existing[0]}):"
                " a container gets a cgroup of its own, created by the agent"
            )
        self.owns_cgroup = True
        self.cgroup_parents.update(
            parent
            for parent in _parents(self.cgroup.path)
            if not open_cgroup(parent, self.cgroup.root).directories()
        )
        self.bundle.write_config(self.spec)
        pid = await self._spawn(
            process,
            lambda stdio, console: self.runtime.create(
                self.id, self.bundle.path, stdio=stdio, console=console
            ),
        )
        process.started(pid, self.reaper)
        self.init = process
        self._processes.add(process)
        self._init_tracker = asyncio.ensure_future(self._track_init(process))

    async def _spawn(
        self,
        process: Process,
        run: Callable[..., Awaitable[tuple[int, int | None]]],
    ) -> int:
        console = None
        stdio = None
        if process.terminal:
            os.makedirs(STATE_ROOT, exist_ok=True)
            # Short path: a unix socket path must fit in 108 bytes, container ids are long.
            # os.urandom is what secrets.token_hex uses, without secrets' hmac/random imports.
            console = ConsoleSocket(os.path.join(STATE_ROOT, f"tty-{os.urandom(8).hex()}.sock"))
        else:
            stdio = process.pipes(self.pipe_size)
        try:
            pid, master = await run(stdio, console)
        except BaseException:
            process.close_stdio()
            raise
        finally:
            if stdio is not None:
                stdio.close()
            if console is not None:
                console.close()
        if master is not None:
            process.attach_tty(master)
        return pid

    async def _track_init(self, process: Process) -> None:
        await process.wait()
        self.state = State.STOPPED

    async def start(self, on_oom: Callable[[str], None]) -> None:
        if self.state is not State.CREATED or self.init is None:
            raise FailedPrecondition(f"container {self.id} is {self.state.value}, not created")
        # Running from now on, so that a concurrent second start is refused.
        self.state = State.RUNNING
        runtime_exe = _exe(self.init.pid)
        self._watch_oom(on_oom)
        try:
            await self.runtime.start(self.id)
        except BaseException:
            await self._stop_oom_watch()
            if self.state is State.RUNNING:
                self.state = State.CREATED
            raise
        await _until_exec(self.init, runtime_exe)

    def _watch_oom(
        self, on_oom: Callable[[str], None], notifier: OomNotifier | None = None
    ) -> None:
        """Report every OOM kill in the container; ``notifier``: one carried over an upgrade."""
        if notifier is None:
            try:
                notifier = self.cgroup.open_oom_notifier()
            except OSError as exc:
                logger.warning(
                    "no OOM events for container", extra={"container": self.id, "error": str(exc)}
                )
                return
        watched = notifier

        async def watch() -> None:
            try:
                while True:
                    count = await watched.wait()
                    if count == 0:
                        return
                    logger.info("OOM in container", extra={"container": self.id})
                    for _ in range(count):
                        on_oom(self.id)
            finally:
                watched.close()
                self._oom_notifier = None

        self._oom_notifier = notifier
        self._oom_task = asyncio.ensure_future(watch())

    async def _stop_oom_watch(self) -> None:
        if self._oom_task is not None and not self._oom_task.done():
            self._oom_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._oom_task
        self._oom_task = None

    async def exec(
        self,
        exec_id: str,
        process_spec: dict[str, Any],
        string_user: StringUser | None = None,
    ) -> None:
        """Start one more process as ``process_spec`` (OCI JSON) says, with the defaults an
        init gets for what it leaves out; user names resolve in the container's rootfs."""
        if exec_id in self._processes:
            raise AlreadyExists(f"exec id {exec_id} already exists in container {self.id}")
        if self.state is not State.RUNNING:
            raise FailedPrecondition(f"container {self.id} is {self.state.value}, not running")
        resolve_process_user(self.bundle.rootfs, process_spec, string_user)
        process_defaults(process_spec)
        process = Process(exec_id, init=False, terminal=bool(process_spec.get("terminal")))
        # Reserve the exec id while the runtime works.
        self._processes.add(process)
        try:
            pid = await self._spawn(
                process,
                lambda stdio, console: self.runtime.exec(
                    self.id, self.bundle.path, exec_id, process_spec, stdio=stdio, console=console
                ),
            )
        except BaseException:
            self._processes.discard(process)
            raise
        process.started(pid, self.reaper)
        logger.info("process started", extra={"container": self.id, "exec_id": exec_id})

    def find_process(self, exec_id: str) -> Process:
        """The live process of ``exec_id``; an empty id means the container's init."""
        if not exec_id:
            if self.init is not None and self.init.exec_id in self._processes:
                return self.init
            raise NotFound(f"container {self.id} has no init process any more")
        process = self._processes.live(exec_id)
        if process is None:
            raise NotFound(f"process {exec_id} not found in container {self.id}")
        return process

    def _find_output(self, exec_id: str) -> Process:
        """The process whose output to read: a live one, or a waited-for one still draining."""
        if not exec_id and self.init is not None and self.init.exec_id not in self._processes:
            exec_id = self.init.exec_id
        return self._processes.readable(exec_id) or self.find_process(exec_id)

    async def wait_process(self, exec_id: str) -> int:
        """The exit status; every waiter gets it, the first one back retires the process."""
        process = self.find_process(exec_id)
        status = await process.wait()
        await self._processes.waited(process)
        return status

    async def signal_process(self, exec_id: str, sig: int) -> None:
        # Kata's encoding of "all processes": no exec id and SIGKILL.
        if not exec_id and sig == signal.SIGKILL:
            await self.signal_all(sig)
            return
        process = self.find_process(exec_id)
        # An init without a SIGTERM handler would ignore it (pid 1 of its namespace): Kata
        # turns that into SIGKILL.
        if process.init and sig == signal.SIGTERM and not process.catches(sig):
            sig = signal.SIGKILL
        process.signal(sig)

    async def read_stdout(self, exec_id: str, size: int) -> bytes:
        process = self._find_output(exec_id)
        if process.stdout is None:
            raise FailedPrecondition("the process has no stdout")
        return await self._processes.read(process, process.stdout, size)

    async def read_stderr(self, exec_id: str, size: int) -> bytes:
        process = self._find_output(exec_id)
        if process.stderr is None:
            # A terminal merges stderr into stdout: there is nothing to read here.
            return b""
        return await self._processes.read(process, process.stderr, size)

    async def pause(self) -> None:
        if self.state is not State.RUNNING:
            raise FailedPrecondition(f"container {self.id} is {self.state.value}, not running")
        await self.runtime.pause(self.id)
        self.state = State.PAUSED

    async def resume(self) -> None:
        if self.state is not State.PAUSED:
            raise FailedPrecondition(f"container {self.id} is {self.state.value}, not paused")
        await self.runtime.resume(self.id)
        self.state = State.RUNNING

    async def update(self, resources: dict[str, Any]) -> None:
        if self.state is State.STOPPED:
            raise FailedPrecondition(f"container {self.id} is stopped")
        await self.runtime.update(self.id, self.bundle.path, resources)

    async def signal_all(self, sig: int) -> None:
        """Signal every task in the cgroup, frozen meanwhile so none can fork away."""
        if not self.owns_cgroup:
            # Not a cgroup the agent made: only the processes it started.
            for process in self._processes.live_processes():
                with contextlib.suppress(ProcessLookupError):
                    process.signal(sig)
            return
        frozen = False
        try:
            await self.cgroup.freeze(True)
            frozen = True
        except OSError as exc:
            logger.warning("freeze failed", extra={"container": self.id, "error": str(exc)})
        try:
            for pid in self.cgroup.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        finally:
            if frozen and self.state is not State.PAUSED:
                with contextlib.suppress(OSError):
                    await self.cgroup.freeze(False)

    async def destroy(self) -> None:
        """Kill everything, delete the runtime container, unmount and free what it held.

        Every step runs even when an earlier one failed; the failures are raised together
        (Internal) and a later call retries only the steps not done yet."""
        async with self._destroy_lock:
            if self.destroyed:
                return
            errors: list[str] = []
            for name, step in (
                ("kill", self._kill_all),
                ("runtime", self._delete_runtime),
                ("processes", self._release_processes),
                ("cgroup", self._remove_cgroup),
                ("bundle", self._remove_bundle),
                ("storages", self._remove_storages),
            ):
                if name in self._torn_down:
                    continue
                try:
                    await step()
                except Exception as exc:
                    logger.warning(
                        "container teardown step failed",
                        extra={"container": self.id, "step": name, "error": str(exc)},
                    )
                    errors.append(f"{name}: {exc}")
                else:
                    self._torn_down.add(name)
            self.state = State.STOPPED
            if errors:
                raise Internal(f"container {self.id} teardown incomplete: {'; '.join(errors)}")
            self.destroyed = True

    async def _kill_all(self) -> None:
        if self.owns_cgroup and self.cgroup.exists():
            await self.signal_all(signal.SIGKILL)
            if self.state is State.PAUSED:
                with contextlib.suppress(OSError):
                    await self.cgroup.freeze(False)
        else:
            await self.signal_all(signal.SIGKILL)

    async def _delete_runtime(self) -> None:
        # The runtime fails on a container it never made or already forgot: nothing to do.
        with contextlib.suppress(RuntimeFailure):
            await self.runtime.delete(self.id)

    async def _release_processes(self) -> None:
        for process in self._processes.live_processes():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await process.wait()
        await self._processes.release_all()
        await self._stop_oom_watch()
        if self._init_tracker is not None and not self._init_tracker.done():
            self._init_tracker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._init_tracker

    async def _remove_cgroup(self) -> None:
        if not self.owns_cgroup:
            return
        self.cgroup.remove()
        # Deepest first; one still holding another container's cgroup stays.
        for parent in reversed(_parents(self.cgroup.path)):
            if parent not in self.cgroup_parents:
                break
            try:
                open_cgroup(parent, self.cgroup.root).remove()
            except OSError:
                break
            self.cgroup_parents.discard(parent)

    async def _remove_bundle(self) -> None:
        # The rootfs may sit on a share whose daemon died: stat/umount would never return.
        await bounded(
            self.bundle.remove, BUNDLE_REMOVE_TIMEOUT, f"removing the bundle of {self.id}"
        )

    def processes(self) -> list[Process]:
        """Every process the agent still holds (live, or waited for with output unread)."""
        return self._processes.all()

    def snapshot(self) -> dict[str, Any]:
        """The container as a restored agent takes it over (upgrade/state.py)."""
        return {
            "id": self.id,
            "bundle_base": self.bundle.base,
            "spec": self.spec,
            "storages": self.storages,
            "pipe_size": self.pipe_size,
            "state": self.state.value,
            "init": None if self.init is None else self.init.snapshot(),
            "processes": self._processes.snapshot(),
            "oom": None if self._oom_notifier is None else self._oom_notifier.snapshot(),
            "owns_cgroup": self.owns_cgroup,
            "torn_down": sorted(self._torn_down),
            "destroyed": self.destroyed,
        }

    def fds(self) -> list[int]:
        fds = [fd for process in self._processes.all() for fd in process.fds()]
        return fds if self._oom_notifier is None else [*fds, self._oom_notifier.fd]

    @classmethod
    def restored(
        cls,
        state: dict[str, Any],
        runtime: OciRuntime,
        reaper: Reaper,
        storage_manager: StorageManager,
        on_oom: Callable[[str], None],
    ) -> Container:
        cid = state["id"]
        container = cls(
            cid,
            Bundle(cid, state["bundle_base"]),
            state["spec"],
            runtime,
            reaper,
            list(state["storages"]),
            storage_manager,
            int(state["pipe_size"]),
        )
        container.state = State(state["state"])
        table = state["processes"]
        processes = {
            p["exec_id"]: Process.restored(p, reaper) for p in [*table["live"], *table["draining"]]
        }
        init = state["init"]
        if init is not None:
            container.init = processes.get(init["exec_id"]) or Process.restored(init, reaper)
            if not container.init.exited:
                container._init_tracker = asyncio.ensure_future(
                    container._track_init(container.init)
                )
        container._processes = ProcessTable.restored(table, processes)
        container.owns_cgroup = bool(state["owns_cgroup"])
        container._torn_down = set(state["torn_down"])
        container.destroyed = bool(state["destroyed"])
        if state["oom"] is not None:
            # The same fd: an OOM kill while the agents switched is still queued on it.
            container._watch_oom(on_oom, container.cgroup.adopt_oom_notifier(state["oom"]))
        return container

    async def _remove_storages(self) -> None:
        # One at a time: a retry must not drop a reference twice.
        for mount_point in list(self.storages):
            await self.storage_manager.remove([mount_point])
            self.storages.remove(mount_point)


def _parents(path: str) -> list[str]:
    """The ancestors of a container cgroup path from CONTAINER_ROOT down, itself excluded."""
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def _exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


async def _until_exec(process: Process, runtime_exe: str | None) -> None:
    """Wait until ``process`` has left the runtime's init and runs the container's program.

    ``runtime start`` returns before that exec; a signal arriving in between would reach
    the runtime's init (which handles everything) instead of the program.
    """
    for _ in range(EXEC_WAIT_STEPS):
        if runtime_exe is None or process.exit_status is not None:
            return
        exe = _exe(process.pid)
        if exe is None or exe != runtime_exe:
            return
        await asyncio.sleep(0.002)
    logger.warning("container init still in the runtime after start", extra={"pid": process.pid})
