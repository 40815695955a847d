"""The sandbox: the pod-wide state every RPC works on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from dataclasses import dataclass, field
from typing import Any

from pykata.agent import blocking, kmod, log, namespaces
from pykata.agent.cgroups import check_container_path, own_cgroups
from pykata.agent.config import AgentConfig, in_guest
from pykata.agent.container.bundle import Bundle
from pykata.agent.container.container import Container
from pykata.agent.container.guestenv import apply_net_sysctls, guest_lsms, load_guest_hooks
from pykata.agent.container.runtime import OciRuntime, detect
from pykata.agent.container.shared_mounts import SharedMount, attach, container_name
from pykata.agent.container.shared_mounts import validate as validate_shared_mounts
from pykata.agent.container.spec import rewrite_spec
from pykata.agent.device.registry import Devices
from pykata.agent.device.spec import DeviceSpec, update_spec_devices
from pykata.agent.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from pykata.agent.mount import MS_BIND, mount, umount
from pykata.agent.network.netlink import Netlink
from pykata.agent.process.user import StringUser, resolve_process_user
from pykata.agent.reaper import Reaper
from pykata.agent.storage import ephemeral
from pykata.agent.storage.manager import StorageManager, StorageSpec
from pykata.agent.validation import (
    CONTAINER_BASE,
    validate_container_id,
    validate_exec_id,
    validate_sandbox_id,
    validate_under,
)

logger = log.get("sandbox")

SANDBOX_DIR = f"{CONTAINER_BASE}/sandbox"
RESOLV_CONF = f"{SANDBOX_DIR}/resolv.conf"
GUEST_RESOLV_CONF = "/etc/resolv.conf"
MAX_HOSTNAME = 64
# Bound on waiting at exit for a runtime probe still in progress.
PROBE_SETTLE_TIMEOUT = 10.0
# As the 60 s the agent gave modprobe: a module init may wait for a device.
MODULE_LOAD_TIMEOUT = 60.0
_MODULE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class KernelModule:
    name: str
    parameters: list[str] = field(default_factory=list)


def owns_etc() -> bool:
    """Mounting over /etc/resolv.conf is ours to do: in a guest, or in a private mount ns."""
    if in_guest(os.getpid() == 1, os.environ):
        return True
    try:
        return os.readlink("/proc/self/ns/mnt") != os.readlink("/proc/1/ns/mnt")
    except OSError:
        return False


def _log_probe_failure(probe: asyncio.Future[OciRuntime]) -> None:
    if not probe.cancelled() and (exc := probe.exception()) is not None:
        logger.error("no usable OCI runtime", extra={"error": str(exc)})


class Sandbox:
    def __init__(self, config: AgentConfig, reaper: Reaper) -> None:
        self.config = config
        self.reaper = reaper
        self.devices = Devices(config.hotplug_timeout)
        self.storages = StorageManager(devices=self.devices)
        # The guest's network namespace is the pod's: the host configures it through here.
        self.network = Netlink()
        self.id: str | None = None
        self.hostname = ""
        self.running = False
        self.containers: dict[str, Container] = {}
        self.namespaces: dict[str, str] = {}
        self.oom_events: asyncio.Queue[str] = asyncio.Queue()
        self.mounts: list[str] = []  # mount points of the sandbox-level storages
        self.dns: list[str] = []
        # Set once DestroySandbox has answered: main() then stops the agent.
        self.destroyed = asyncio.Event()
        # The first container's pid namespace (its id, the namespace file): the one
        # containers created with sandbox_pidns join, as in the Rust agent.
        self._pidns: tuple[str, str] | None = None
        # OCI hooks found below CreateSandbox's guest_hook_path, added to every container.
        self.guest_hooks: dict[str, list[dict[str, Any]]] = {}
        self._lsms: frozenset[str] | None = None
        self._resolv_mounted = False
        self._lock = asyncio.Lock()
        self._runtime_probe: asyncio.Future[OciRuntime] | None = None
        # Containers being created and the cgroup each claimed: a second create of one id,
        # or of one cgroup, is refused meanwhile.
        self._creating: dict[str, str] = {}
        # Parent cgroups the agent made below /kata (see Container.cgroup_parents).
        self._cgroup_parents: set[str] = set()

    def get_container(self, cid: str) -> Container:
        try:
            return self.containers[cid]
        except KeyError:
            raise NotFound(f"container {cid} not found") from None

    def start_runtime_probe(self) -> None:
        """Detect the OCI runtime in the background (at start-up, right after listening):
        no request pays for the probe, and no dropped client can interrupt it."""
        if self._runtime_probe is None:
            self._runtime_probe = asyncio.ensure_future(detect(self.reaper))
            self._runtime_probe.add_done_callback(_log_probe_failure)

    async def settle_runtime_probe(self) -> None:
        """Let a probe still running finish (it deletes its container and cgroup) before
        the agent exits."""
        probe = self._runtime_probe
        if probe is not None and not probe.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(probe), PROBE_SETTLE_TIMEOUT)

    async def _oci_runtime(self) -> OciRuntime:
        """The OCI runtime the start-up probe found (probed now if it was never started)."""
        self.start_runtime_probe()
        assert self._runtime_probe is not None
        # Shielded: a cancelled request leaves the probe running for the next one.
        return await asyncio.shield(self._runtime_probe)

    async def create_container(
        self,
        *,
        container_id: str,
        exec_id: str,
        spec: dict[str, Any] | None,
        storages: list[StorageSpec],
        devices: list[DeviceSpec] | None = None,
        sandbox_pidns: bool,
        string_user: StringUser | None = None,
        shared_mounts: list[SharedMount] | None = None,
    ) -> None:
        """Bundle, storages and ``runtime create``: the init waits for start_container.

        ``exec_id`` defaults to the container id; a failing step undoes the ones before.
        With ``sandbox_pidns`` the container joins the first container's pid namespace;
        ``shared_mounts`` are cloned in from other containers before it starts.
        The work runs shielded from the request's cancellation (a dropped client): a
        cancelled request waits for it and then undoes it, so nothing is left half-made.
        """
        cid = validate_container_id(container_id)
        exec_id = validate_exec_id(exec_id or cid)
        if spec is None:
            raise InvalidArgument("CreateContainer needs an OCI spec")
        if cid in self.containers or cid in self._creating:
            raise AlreadyExists(f"container {cid} already exists")
        root = spec.get("root", {}).get("path", "")
        if not root:
            raise InvalidArgument("the OCI spec has no root path")
        mounts = validate_shared_mounts(shared_mounts or [])
        shared = dict(self.namespaces)
        if sandbox_pidns and (pidns := self._sandbox_pidns()):
            shared["pid"] = pidns
        if self._lsms is None:
            self._lsms = guest_lsms()
        self._creating[cid] = ""
        try:
            work = asyncio.ensure_future(
                self._create_container(
                    cid, exec_id, spec, root, shared, storages, devices or [], string_user, mounts
                )
            )
            try:
                container = await asyncio.shield(work)
            except asyncio.CancelledError:
                await self._undo_cancelled_create(cid, work)
                raise
            if self._pidns is None and not self.containers and container.init is not None:
                self._pidns = (cid, f"/proc/{container.init.pid}/ns/pid")
            self.containers[cid] = container
        finally:
            self._creating.pop(cid, None)
        logger.info("container created", extra={"container": cid})

    async def _undo_cancelled_create(self, cid: str, work: asyncio.Future[Container]) -> None:
        """The request was cancelled: let the creation finish, then tear it down."""
        while not work.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(work)
        if work.cancelled() or work.exception() is not None:
            return  # the creation failed and rolled itself back
        container = work.result()
        logger.warning("container creation cancelled: undone", extra={"container": cid})
        teardown = asyncio.ensure_future(container.destroy())
        while not teardown.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(teardown)
        if teardown.exception() is not None:
            # Known to the API, so that RemoveContainer can finish the teardown.
            self.containers[cid] = container

    async def _create_container(
        self,
        cid: str,
        exec_id: str,
        spec: dict[str, Any],
        root: str,
        shared: dict[str, str],
        storages: list[StorageSpec],
        devices: list[DeviceSpec],
        string_user: StringUser | None,
        shared_mounts: list[SharedMount],
    ) -> Container:
        runtime = await self._oci_runtime()
        bundle = Bundle(cid)
        assert self._lsms is not None
        guest = rewrite_spec(
            spec,
            container_id=cid,
            rootfs=bundle.rootfs,
            namespaces=shared,
            lsms=self._lsms,
            guest_hooks=self.guest_hooks,
        )
        self._claim_cgroup(cid, guest.spec["linux"]["cgroupsPath"])
        await update_spec_devices(guest.spec, devices, self.devices)
        mount_points = await self.storages.add(storages, cid=cid)
        container = Container(
            cid,
            bundle,
            guest.spec,
            runtime,
            self.reaper,
            mount_points,
            self.storages,
            self.config.container_pipe_size,
        )
        container.cgroup_parents = self._cgroup_parents
        try:
            bundle.create(root)
            resolve_process_user(bundle.rootfs, guest.spec["process"], string_user)
            apply_net_sysctls(guest.net_sysctls, cid)
            await container.launch(exec_id)
            if shared_mounts:
                assert container.init is not None
                await attach(shared_mounts, self._init_pids_by_name(), container.init.pid)
        except BaseException:
            try:
                await container.destroy()
            except Exception:
                logger.exception("cannot undo a failed creation", extra={"container": cid})
                # Known to the API, so that RemoveContainer can finish the teardown.
                self.containers[cid] = container
            raise
        return container

    def _init_pids_by_name(self) -> dict[str, int]:
        """The init pid of each container with a CRI name (shared mounts' sources)."""
        return {
            name: container.init.pid
            for container in self.containers.values()
            if container.init is not None and (name := container_name(container.spec))
        }

    def _claim_cgroup(self, cid: str, path: str) -> None:
        """Refuse a cgroup that is the agent's, above it, or another container's."""
        in_use = [c.cgroup.path for c in self.containers.values()]
        in_use += [p for other, p in self._creating.items() if other != cid and p]
        problem = check_container_path(path, in_use, own_cgroups())
        if problem:
            raise InvalidArgument(f"linux.cgroupsPath: {problem}")
        self._creating[cid] = path

    def _sandbox_pidns(self) -> str:
        """The pid namespace file to join; empty for the first container, which makes it."""
        if self._pidns is None:
            if self.containers:
                raise FailedPrecondition("the sandbox has no shared pid namespace")
            return ""
        owner, path = self._pidns
        if owner not in self.containers:
            raise FailedPrecondition(
                f"the sandbox pid namespace is gone: its container {owner} was removed"
            )
        return path

    async def start_container(self, cid: str) -> None:
        container = self.get_container(cid)
        await container.start(self.oom_events.put_nowait)
        logger.info("container started", extra={"container": cid})

    async def remove_container(self, cid: str, time_limit: int) -> None:
        """Destroy the container; past ``time_limit`` seconds (0: none) DeadlineExceeded,
        while the teardown goes on in the background (as in Kata). The container stays known
        until its teardown completed: a failed one answers its error and a retry continues."""
        container = self.get_container(cid)
        destroy = asyncio.ensure_future(self._destroy_container(cid, container))
        if time_limit:
            done, _ = await asyncio.wait([destroy], timeout=time_limit)
            if not done:
                raise DeadlineExceeded(f"removing container {cid} took longer than {time_limit}s")
        # A dropped client does not stop the teardown half-way.
        await asyncio.shield(destroy)
        logger.info("container removed", extra={"container": cid})

    async def _destroy_container(self, cid: str, container: Container) -> None:
        await container.destroy()
        if self.containers.get(cid) is container:
            del self.containers[cid]

    async def update_ephemeral_mounts(self, specs: list[StorageSpec]) -> None:
        """Mounted ephemeral storages get the new options (the runtime sends
        ``remount,size=...`` after a memory resize); others become new sandbox storages."""
        for spec in specs:
            if spec.driver != "ephemeral":
                raise InvalidArgument(
                    f"only ephemeral storages can be updated, not {spec.driver!r}"
                )
        new = []
        for spec in specs:
            driver = self.storages.driver_of(validate_under(spec.mount_point))
            if driver is None:
                new.append(spec)
            elif driver != "ephemeral":
                raise InvalidArgument(f"{spec.mount_point} is a {driver} storage")
            elif spec.options:
                try:
                    ephemeral.remount(spec)
                except OSError as exc:
                    raise FailedPrecondition(f"remount {spec.mount_point}: {exc}") from exc
        self.mounts += await self.storages.add(new)

    async def create(
        self,
        *,
        sandbox_id: str,
        hostname: str,
        dns: list[str],
        storages: list[StorageSpec],
        sandbox_pidns: bool,
        kernel_modules: list[KernelModule],
        guest_hook_path: str,
    ) -> None:
        """``sandbox_pidns`` has no effect of its own (the Rust agent ignores it too): each
        CreateContainer's flag decides whether it joins the first container's namespace."""
        if guest_hook_path and not os.path.isabs(guest_hook_path):
            raise InvalidArgument(f"guest_hook_path {guest_hook_path!r} must be absolute")
        if sandbox_id:
            validate_sandbox_id(sandbox_id)
        if len(hostname.encode()) > MAX_HOSTNAME or "\0" in hostname:
            raise InvalidArgument(f"invalid hostname {hostname!r}")
        for line in dns:
            if "\n" in line or "\0" in line:
                raise InvalidArgument(f"invalid dns entry {line!r}")
        for module in kernel_modules:
            if not _MODULE_NAME.fullmatch(module.name):
                raise InvalidArgument(f"invalid kernel module name {module.name!r}")
            if any(p.startswith("-") or "\0" in p for p in module.parameters):
                raise InvalidArgument(f"invalid parameters for kernel module {module.name}")
        async with self._lock:
            if self.running:
                raise AlreadyExists("the sandbox is already created")
            os.makedirs(SANDBOX_DIR, exist_ok=True)
            try:
                if kernel_modules:
                    await self._load_modules(kernel_modules)
                self.namespaces["ipc"] = namespaces.persist("ipc")
                self.namespaces["uts"] = namespaces.persist("uts", hostname)
                self.mounts = await self.storages.add(storages)
                self.guest_hooks = load_guest_hooks(guest_hook_path)
                self._setup_dns(dns)
            except BaseException:
                await self._teardown()
                raise
            self.id = sandbox_id or None
            self.hostname = hostname
            self.dns = list(dns)
            self.running = True
            logger.info("sandbox created", extra={"sandbox": sandbox_id})

    async def _load_modules(self, modules: list[KernelModule]) -> None:
        """Each module in order, against one reading of the kernel's module index."""

        def load() -> None:
            index = kmod.ModuleIndex(kmod.modules_dir())
            for module in modules:
                kmod.load(index, module.name, module.parameters)

        names = ", ".join(module.name for module in modules)
        try:
            await blocking.bounded(load, MODULE_LOAD_TIMEOUT, f"loading modules {names}")
        except kmod.ModuleError as exc:
            raise FailedPrecondition(f"kernel modules {names}: {exc}") from exc

    def _setup_dns(self, dns: list[str]) -> None:
        if not dns:
            return
        with open(RESOLV_CONF, "w") as f:
            f.write("".join(line + "\n" for line in dns))
        if not owns_etc():
            logger.info(
                "not in a guest: /etc/resolv.conf left alone",
                extra={"resolv_conf": RESOLV_CONF},
            )
            return
        if not os.path.exists(GUEST_RESOLV_CONF):
            # A minimal image may have none, or a link into a resolver that is not running.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(GUEST_RESOLV_CONF)
            os.makedirs(os.path.dirname(GUEST_RESOLV_CONF), exist_ok=True)
            with open(GUEST_RESOLV_CONF, "w"):
                pass
        mount(RESOLV_CONF, GUEST_RESOLV_CONF, None, MS_BIND)
        self._resolv_mounted = True

    def snapshot(self) -> dict[str, Any]:
        """The pod as a restored agent takes it over (upgrade/state.py)."""
        probe = self._runtime_probe
        runtime = None
        if probe is not None and probe.done() and not probe.cancelled() and not probe.exception():
            found = probe.result()
            runtime = {"binary": found.binary, "no_pivot": found.no_pivot}
        return {
            "id": self.id,
            "hostname": self.hostname,
            "running": self.running,
            "namespaces": self.namespaces,
            "mounts": self.mounts,
            "dns": self.dns,
            "pidns": None if self._pidns is None else list(self._pidns),
            "guest_hooks": self.guest_hooks,
            "resolv_mounted": self._resolv_mounted,
            "cgroup_parents": sorted(self._cgroup_parents),
            "oom_events": self._pending_oom_events(),
            "runtime": runtime,
            "storages": self.storages.snapshot(),
            "containers": [c.snapshot() for c in self.containers.values()],
        }

    def _pending_oom_events(self) -> list[str]:
        events = []
        while not self.oom_events.empty():
            events.append(self.oom_events.get_nowait())
        for cid in events:
            self.oom_events.put_nowait(cid)
        return events

    def busy(self) -> list[str]:
        """What must finish before the state can be handed over (a create in progress)."""
        return [f"creating container {cid}" for cid in self._creating]

    def fds(self) -> list[int]:
        return [fd for c in self.containers.values() for fd in c.fds()]

    def restore(self, state: dict[str, Any]) -> None:
        from pykata.agent.container.runtime import OciRuntime

        self.id = state["id"]
        self.hostname = state["hostname"]
        self.running = bool(state["running"])
        self.namespaces = dict(state["namespaces"])
        self.mounts = list(state["mounts"])
        self.dns = list(state["dns"])
        self._pidns = None if state["pidns"] is None else (state["pidns"][0], state["pidns"][1])
        self.guest_hooks = state["guest_hooks"]
        self._resolv_mounted = bool(state["resolv_mounted"])
        self._cgroup_parents.update(state["cgroup_parents"])
        for cid in state["oom_events"]:
            self.oom_events.put_nowait(cid)
        self.storages.restore(state["storages"])
        found = state["runtime"]
        if found is None:
            self.start_runtime_probe()
        else:
            runtime = OciRuntime(found["binary"], self.reaper, no_pivot=bool(found["no_pivot"]))
            probe: asyncio.Future[OciRuntime] = asyncio.get_running_loop().create_future()
            probe.set_result(runtime)
            self._runtime_probe = probe
        for item in state["containers"]:
            if found is None:
                # Containers exist only once a runtime was found.
                raise ValueError("state has containers but no OCI runtime")
            container = Container.restored(
                item, runtime, self.reaper, self.storages, self.oom_events.put_nowait
            )
            container.cgroup_parents = self._cgroup_parents
            self.containers[container.id] = container

    async def destroy(self) -> None:
        """Tear everything down; every step runs even if an earlier one failed."""
        async with self._lock:
            for cid, container in list(self.containers.items()):
                try:
                    await container.destroy()
                except Exception:
                    logger.exception("cannot destroy container", extra={"container": cid})
                else:
                    self.containers.pop(cid, None)
            await self._teardown()
            self.running = False
            logger.info("sandbox destroyed", extra={"sandbox": self.id})

    async def _teardown(self) -> None:
        steps: list[tuple[str, Any]] = [
            ("storages", self.storages.remove_all),
            ("namespaces", self._release_namespaces),
            ("resolv.conf", self._release_dns),
            ("netlink", self.network.close),
        ]
        for what, step in steps:
            try:
                result = step()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                logger.exception("sandbox cleanup step failed", extra={"step": what})
        self.mounts = []
        self._pidns = None
        self.guest_hooks = {}
        for directory in (namespaces.ns_dir(), namespaces.NS_ROOT):
            with contextlib.suppress(OSError):
                os.rmdir(directory)

    def _release_namespaces(self) -> None:
        for kind in ("ipc", "uts"):
            path = self.namespaces.pop(kind, None)
            if path is not None:
                namespaces.release(path)

    def _release_dns(self) -> None:
        if self._resolv_mounted:
            umount(GUEST_RESOLV_CONF)
            self._resolv_mounted = False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(RESOLV_CONF)
