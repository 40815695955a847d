"""The Cloud Hypervisor REST API (``/api/v1/<name>``) on top of a Machine.

The VM's life: none → ``vm.create`` → Created → ``vm.boot`` → Running (⇄ Paused) →
Shutdown (``vm.shutdown``, or the guest powered off); ``vm.delete`` forgets it and
``vmm.shutdown`` ends the launcher. Before boot, devices and resizes only change the
config; after boot they are hot-plugged. Calls that change the VM run one at a time;
``vmm.ping`` and ``vm.info`` never wait for them (the shim gives them 1 s).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import enum
import logging
import os
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

from pykata.host.clh import config as cfg
from pykata.host.clh.errors import (
    AlreadyExists,
    ApiError,
    BadRequest,
    MachineFailure,
    NoSuchDevice,
    NotCreated,
    UnknownEndpoint,
    Unsupported,
    WrongMethod,
    WrongState,
)
from pykata.host.clh.http import Request, Response, close_fds
from pykata.host.clh.machine import Machine

log = logging.getLogger(__name__)

PREFIX = "/api/v1/"
# The one place errors become HTTP statuses (Cloud Hypervisor's choices where it has any).
STATUS: dict[type[ApiError], int] = {
    BadRequest: 400,
    UnknownEndpoint: 404,
    NotCreated: 404,
    NoSuchDevice: 404,
    WrongMethod: 405,
    WrongState: 405,
    AlreadyExists: 409,
    MachineFailure: 500,
    Unsupported: 501,
}
# Cloud Hypervisor endpoints this launcher knows of but does not offer.
NOT_OFFERED = (
    "vm.add-fs", "vm.add-pmem", "vm.add-vsock", "vm.add-vdpa", "vm.add-user-device",
    "vm.add-generic-vhost-user", "vm.resize-zone", "vm.resize-disk", "vm.snapshot",
    "vm.restore", "vm.coredump", "vm.send-migration", "vm.receive-migration",
    "vm.counters", "vm.balloon-stats", "vm.nmi",
)  # fmt: skip


class VmState(enum.Enum):
    CREATED = "Created"
    RUNNING = "Running"
    PAUSED = "Paused"
    SHUTDOWN = "Shutdown"


def version() -> str:
    try:
        return metadata.version("pykata")
    except metadata.PackageNotFoundError:
        return "unknown"


def status_of(error: ApiError) -> int:
    for kind in type(error).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 500


class Api:
    def __init__(self, machine: Machine, on_shutdown: Callable[[], None]) -> None:
        self.machine = machine
        self.on_shutdown = on_shutdown
        self.config: cfg.VmConfig | None = None
        self.raw: dict[str, Any] = {}  # the config as vm.info shows it
        self.state = VmState.CREATED
        self.memory_size = 0
        self.lock = asyncio.Lock()
        self._next_id = 0
        Route = Callable[[Request], Awaitable[Response]]
        self.routes: dict[str, tuple[str, Route]] = {
            "vmm.ping": ("GET", self.ping),
            "vmm.shutdown": ("PUT", self.vmm_shutdown),
            "vm.info": ("GET", self.info),
            "vm.create": ("PUT", self.locked(self.create)),
            "vm.delete": ("PUT", self.locked(self.delete)),
            "vm.boot": ("PUT", self.locked(self.boot)),
            "vm.shutdown": ("PUT", self.locked(self.shutdown)),
            "vm.reboot": ("PUT", self.locked(self.reboot)),
            "vm.power-button": ("PUT", self.locked(self.power_button)),
            "vm.pause": ("PUT", self.locked(self.pause)),
            "vm.resume": ("PUT", self.locked(self.resume)),
            "vm.resize": ("PUT", self.locked(self.resize)),
            "vm.add-net": ("PUT", self.locked(self.add_net)),
            "vm.add-disk": ("PUT", self.locked(self.add_disk)),
            "vm.add-device": ("PUT", self.locked(self.add_device)),
            "vm.remove-device": ("PUT", self.locked(self.remove_device)),
        }

    def locked(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            async with self.lock:
                return await handler(request)

        return run

    async def handle(self, request: Request) -> Response:
        try:
            if not request.path.startswith(PREFIX):
                raise UnknownEndpoint(f"{request.path}: the API lives under {PREFIX}")
            name = request.path[len(PREFIX) :]
            route = self.routes.get(name)
            if route is None:
                if name in NOT_OFFERED:
                    raise Unsupported(f"{name} is not offered by this launcher")
                raise UnknownEndpoint(f"unknown endpoint {request.path}")
            method, handler = route
            if request.method != method:
                raise WrongMethod(f"{name} takes {method}, not {request.method}")
            return await handler(request)
        except ApiError as e:
            status = status_of(e)
            log.log(logging.ERROR if status >= 500 else logging.WARNING, "%s %s: %d %s",
                    request.method, request.path, status, e)  # fmt: skip
            return Response(status, {"error": str(e)})
        except Exception as e:
            log.exception("%s %s failed", request.method, request.path)
            return Response(500, {"error": f"internal error: {e}"})

    # helpers

    def _json(self, request: Request) -> Any:
        if not request.body:
            raise BadRequest("a JSON body is required")
        try:
            return request.json()
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest(f"body is not valid JSON: {e}") from None

    def _created(self) -> cfg.VmConfig:
        if self.config is None:
            raise NotCreated("no VM: call vm.create first")
        if self.state is not VmState.CREATED and not self.machine.running():
            self.state = VmState.SHUTDOWN
        return self.config

    def _in(self, *states: VmState) -> cfg.VmConfig:
        config = self._created()
        if self.state not in states:
            wanted = " or ".join(s.value for s in states)
            raise WrongState(f"the VM is {self.state.value}, this needs it {wanted}")
        return config

    def _ids(self) -> set[str]:
        config = self.config
        if config is None:
            return set()
        items: list[Any] = [*config.net, *config.disks, *config.devices]
        return {i.id for i in items if i.id}

    def _assign_id(self, given: str | None, kind: str) -> str:
        if given is not None:
            if given in self._ids():
                raise AlreadyExists(f"a device with id {given!r} already exists")
            return given
        while True:
            candidate = f"_{kind}{self._next_id}"
            self._next_id += 1
            if candidate not in self._ids():
                return candidate

    def _hold_config(self, **changes: Any) -> None:
        assert self.config is not None
        self.config = dataclasses.replace(self.config, **changes)

    def _forget(self) -> None:
        if self.config is not None:
            close_fds([fd for net in self.config.net for fd in net.fds])
        self.config = None
        self.raw = {}
        self.state = VmState.CREATED

    # vmm

    async def ping(self, request: Request) -> Response:
        v = version()
        return Response(
            200,
            {"build_version": f"pykata-clh {v}", "version": v, "pid": os.getpid(), "features": []},
        )

    async def vmm_shutdown(self, request: Request) -> Response:
        self.on_shutdown()
        return Response(204)

    # vm lifecycle

    async def info(self, request: Request) -> Response:
        self._created()
        return Response(
            200,
            {"config": self.raw, "state": self.state.value, "memory_actual_size": self.memory_size},
        )

    async def create(self, request: Request) -> Response:
        if self.config is not None:
            raise AlreadyExists("a VM was already created (vm.delete it first)")
        parsed = cfg.parse_vm_config(self._json(request))
        self.config = dataclasses.replace(parsed, net=(), disks=(), devices=())
        self.raw = copy.deepcopy(parsed.raw)
        try:
            for key, kind in (("net", "net"), ("disks", "disk"), ("devices", "device")):
                for item in getattr(parsed, key):
                    item = dataclasses.replace(item, id=self._assign_id(item.id, kind))
                    self._hold_config(**{key: (*getattr(self.config, key), item)})
                entries = self.raw.get(key) or []
                for entry, item in zip(entries, getattr(self.config, key), strict=True):
                    entry["id"] = item.id
            config = self.config
            self.memory_size = config.memory.size
            await self.machine.prepare(self.config)
        except BaseException:
            self._forget()
            await self.machine.close()
            raise
        self.state = VmState.CREATED
        return Response(204)

    async def delete(self, request: Request) -> Response:
        await self.machine.close()
        self._forget()
        return Response(204)

    async def boot(self, request: Request) -> Response:
        config = self._in(VmState.CREATED)
        try:
            await self.machine.boot(config)
        except BaseException:
            await self.machine.close()
            self._forget()
            raise
        # QEMU holds the TAP fds now.
        close_fds([fd for net in config.net for fd in net.fds])
        self._hold_config(net=tuple(dataclasses.replace(n, fds=()) for n in config.net))
        self.state = VmState.RUNNING
        return Response(204)

    async def shutdown(self, request: Request) -> Response:
        self._in(VmState.RUNNING, VmState.PAUSED)
        await self.machine.shutdown_vm()
        self.state = VmState.SHUTDOWN
        return Response(204)

    async def reboot(self, request: Request) -> Response:
        self._in(VmState.RUNNING)
        await self.machine.reboot()
        return Response(204)

    async def power_button(self, request: Request) -> Response:
        self._in(VmState.RUNNING)
        await self.machine.power_button()
        return Response(204)

    async def pause(self, request: Request) -> Response:
        self._in(VmState.RUNNING)
        await self.machine.pause()
        self.state = VmState.PAUSED
        return Response(204)

    async def resume(self, request: Request) -> Response:
        self._in(VmState.PAUSED)
        await self.machine.resume()
        self.state = VmState.RUNNING
        return Response(204)

    # resources

    async def resize(self, request: Request) -> Response:
        resize = cfg.parse_resize(self._json(request))
        config = self._in(VmState.CREATED, VmState.RUNNING)
        booted = self.state is VmState.RUNNING
        vcpus = resize.desired_vcpus
        if vcpus is not None and vcpus != config.cpus.boot_vcpus:
            if vcpus > config.cpus.max_vcpus:
                raise BadRequest(
                    f"desired_vcpus {vcpus} exceeds cpus.max_vcpus {config.cpus.max_vcpus}"
                )
            if booted:
                await self.machine.set_vcpus(vcpus)
            self._hold_config(cpus=dataclasses.replace(config.cpus, boot_vcpus=vcpus))
            self.raw.setdefault("cpus", {})["boot_vcpus"] = vcpus
        ram = resize.desired_ram
        if ram is not None and ram != self.memory_size:
            if ram < self.memory_size:
                raise Unsupported(
                    f"desired_ram {ram} is below the current {self.memory_size}: "
                    "memory cannot be removed"
                )
            if booted:
                limit = config.memory.size + config.memory.hotplug_size
                if ram > limit:
                    raise BadRequest(
                        f"desired_ram {ram} exceeds memory.size + memory.hotplug_size ({limit})"
                    )
                await self.machine.add_memory(ram - self.memory_size)
            else:
                self._hold_config(memory=dataclasses.replace(config.memory, size=ram))
            self.memory_size = ram
            self.raw.setdefault("memory", {})["size"] = ram
        return Response(204)

    async def add_net(self, request: Request) -> Response:
        fds = tuple(request.take_fds())
        try:
            net = cfg.parse_net(self._json(request), "net", fds)
            config = self._in(VmState.CREATED, VmState.RUNNING)
            net = dataclasses.replace(net, id=self._assign_id(net.id, "net"))
            if self.state is VmState.CREATED:
                self._hold_config(net=(*config.net, net))
                self._record("net", request, net.id)
                return Response(204)
            device = await self.machine.add_net(net)
        except BaseException:
            close_fds(list(fds))
            raise
        close_fds(list(fds))  # QEMU has its own copies (getfd)
        self._hold_config(net=(*config.net, dataclasses.replace(net, fds=())))
        self._record("net", request, net.id)
        return Response(200, device.to_json())

    async def add_disk(self, request: Request) -> Response:
        disk = cfg.parse_disk(self._json(request))
        config = self._in(VmState.CREATED, VmState.RUNNING)
        disk = dataclasses.replace(disk, id=self._assign_id(disk.id, "disk"))
        if self.state is VmState.RUNNING:
            device = await self.machine.add_disk(disk)
        self._hold_config(disks=(*config.disks, disk))
        self._record("disks", request, disk.id)
        return Response(204) if self.state is VmState.CREATED else Response(200, device.to_json())

    async def add_device(self, request: Request) -> Response:
        dev = cfg.parse_device(self._json(request))
        config = self._in(VmState.CREATED, VmState.RUNNING)
        dev = dataclasses.replace(dev, id=self._assign_id(dev.id, "device"))
        if self.state is VmState.RUNNING:
            device = await self.machine.add_device(dev)
        self._hold_config(devices=(*config.devices, dev))
        self._record("devices", request, dev.id)
        return Response(204) if self.state is VmState.CREATED else Response(200, device.to_json())

    async def remove_device(self, request: Request) -> Response:
        id_ = cfg.parse_remove(self._json(request))
        config = self._in(VmState.CREATED, VmState.RUNNING)
        if id_ not in self._ids():
            raise NoSuchDevice(f"no device with id {id_!r}")
        if self.state is VmState.RUNNING:
            await self.machine.remove_device(id_)
        gone = [n for n in config.net if n.id == id_]
        close_fds([fd for n in gone for fd in n.fds])
        self._hold_config(
            net=tuple(n for n in config.net if n.id != id_),
            disks=tuple(d for d in config.disks if d.id != id_),
            devices=tuple(d for d in config.devices if d.id != id_),
        )
        for key in ("net", "disks", "devices"):
            if isinstance(self.raw.get(key), list):
                self.raw[key] = [e for e in self.raw[key] if e.get("id") != id_]
        return Response(204)

    def _record(self, key: str, request: Request, id_: str | None) -> None:
        entry = dict(request.json())
        entry["id"] = id_
        if not isinstance(self.raw.get(key), list):
            self.raw[key] = []
        self.raw[key].append(entry)
