"""The sandbox: the pod-wide state every RPC works on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from dataclasses import dataclass, field
from typing import Any

from pykata.agent import log, namespaces
from pykata.agent.config import AgentConfig, in_guest
from pykata.agent.container.bundle import Bundle
from pykata.agent.container.container import Container
from pykata.agent.container.guestenv import apply_net_sysctls, guest_lsms, load_guest_hooks
from pykata.agent.container.runtime import OciRuntime, detect
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
        self._runtime: OciRuntime | None = None
        self._runtime_lock = asyncio.Lock()
        # Ids of containers being created: a second create of one is refused meanwhile.
        self._creating: set[str] = set()

    def get_container(self, cid: str) -> Container:
        try:
            return self.containers[cid]
        except KeyError:
            raise NotFound(f"container {cid} not found") from None

    async def _oci_runtime(self) -> OciRuntime:
        """The OCI runtime, detected on first use."""
        async with self._runtime_lock:
            if self._runtime is None:
                self._runtime = await detect(self.reaper)
            return self._runtime

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
    ) -> None:
        """Bundle, storages and ``runtime create``: the init waits for start_container.

        ``exec_id`` defaults to the container id; a failing step undoes the ones before.
        With ``sandbox_pidns`` the container joins the first container's pid namespace.
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
        shared = dict(self.namespaces)
        if sandbox_pidns and (pidns := self._sandbox_pidns()):
            shared["pid"] = pidns
        if self._lsms is None:
            self._lsms = guest_lsms()
        self._creating.add(cid)
        try:
            runtime = await self._oci_runtime()
            bundle = Bundle(cid)
            guest = rewrite_spec(
                spec,
                container_id=cid,
                rootfs=bundle.rootfs,
                namespaces=shared,
                lsms=self._lsms,
                guest_hooks=self.guest_hooks,
            )
            await update_spec_devices(guest.spec, devices or [], self.devices)
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
            try:
                bundle.create(root)
                resolve_process_user(bundle.rootfs, guest.spec["process"], string_user)
                apply_net_sysctls(guest.net_sysctls, cid)
                await container.launch(exec_id)
            except BaseException:
                await container.destroy()
                raise
            if self._pidns is None and not self.containers and container.init is not None:
                self._pidns = (cid, f"/proc/{container.init.pid}/ns/pid")
            self.containers[cid] = container
        finally:
            self._creating.discard(cid)
        logger.info("container created", extra={"container": cid})

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
        while the teardown goes on in the background (as in Kata)."""
        container = self.get_container(cid)
        destroy = asyncio.ensure_future(container.destroy())
        if time_limit:
            done, _ = await asyncio.wait([destroy], timeout=time_limit)
            if not done:
                raise DeadlineExceeded(f"removing container {cid} took longer than {time_limit}s")
        await destroy
        self.containers.pop(cid, None)
        logger.info("container removed", extra={"container": cid})

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
                for module in kernel_modules:
                    await self._load_module(module)
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

    async def _load_module(self, module: KernelModule) -> None:
        try:
            code, _, err = await self.reaper.run(
                ["modprobe", module.name, *module.parameters], timeout=60
            )
        except OSError as exc:
            raise FailedPrecondition(f"cannot run modprobe: {exc}") from exc
        if code != 0:
            raise FailedPrecondition(
                f"modprobe {module.name} failed: {err.decode(errors='replace').strip()}"
            )

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

    async def destroy(self) -> None:
        """Tear everything down; every step runs even if an earlier one failed."""
        async with self._lock:
            for cid, container in list(self.containers.items()):
                try:
                    await container.destroy()
                except Exception:
                    logger.exception("cannot destroy container", extra={"container": cid})
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
