"""`run --volume IMAGE:/path[:ro]`: a raw file system image hot-plugged as a virtio-blk disk.

As Kata's runtime does for a block volume: before CreateContainer the image goes to a free
PCIe root port of the VM (`vm up --hotplug-ports N`) over QMP (blockdev-add, device_add);
the container gets a `blk` storage naming the disk by its PCI path (`<port slot>/00`),
mounted below /run/kata-containers/sandbox/storage/, and a bind mount of it at /path. After
the container is removed the disk is unplugged (device_del, then the DEVICE_DELETED event,
which takes seconds under TCG) and its block node deleted.

QEMU serves one QMP client at a time: the wait for DEVICE_DELETED holds the connection, so
other QMP users of the VM wait (at most UNPLUG_TIMEOUT).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pykata.host.ctl.errors import CtlError, UsageError
from pykata.protocols import agent_pb2, oci_pb2

STORAGE_BASE = "/run/kata-containers/sandbox/storage"
FILESYSTEMS = ("ext4", "xfs")
UNPLUG_TIMEOUT = 60.0  # seconds for DEVICE_DELETED; under TCG the guest takes 5-15 s
QMP_TIMEOUT = 10.0


class VolumeError(CtlError):
    """A volume could not be attached or detached (run exits 125)."""


@dataclass(frozen=True)
class Volume:
    image: Path
    destination: str
    readonly: bool = False


def parse_volume(text: str) -> Volume:
    """``IMAGE:/path[:ro]`` (or ``:rw``); ValueError naming what is wrong."""
    parts = text.split(":")
    readonly = False
    if len(parts) == 3 and parts[2] in ("ro", "rw"):
        readonly = parts.pop() == "ro"
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise ValueError(f"--volume {text!r}: expected IMAGE:/path[:ro]")
    image, destination = parts
    if not destination.startswith("/") or ".." in destination.split("/"):
        raise ValueError(f"--volume {text!r}: {destination!r} is not an absolute path")
    return Volume(Path(image), destination, readonly)


def file_system(image: Path) -> str:
    """The image's file system type (blkid); VolumeError unless it is ext4 or xfs."""
    if not image.is_file():
        raise VolumeError(f"volume {image}: not a file")
    try:
        found = subprocess.run(
            ["blkid", "-o", "value", "-s", "TYPE", str(image)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VolumeError(f"volume {image}: blkid: {exc}") from None
    fstype = found.stdout.strip()
    if not fstype:
        raise VolumeError(f"volume {image}: no file system found (want a raw ext4 or xfs image)")
    if fstype not in FILESYSTEMS:
        raise VolumeError(f"volume {image}: file system {fstype} is not supported (ext4 or xfs)")
    return fstype


class QMP:
    """One QMP connection: commands and their replies; events are kept for wait_event."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.events: list[dict[str, Any]] = []
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> QMP:
        try:
            reader, self._writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(self.socket)), QMP_TIMEOUT
            )
            self._reader = reader
            await asyncio.wait_for(reader.readline(), QMP_TIMEOUT)  # greeting
            await self.execute("qmp_capabilities")
        except (OSError, TimeoutError) as exc:
            await self.__aexit__(None, None, None)
            raise VolumeError(f"QMP {self.socket}: {exc or 'no answer'}") from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()

    async def _message(self, within: float) -> dict[str, Any]:
        assert self._reader is not None
        line = await asyncio.wait_for(self._reader.readline(), within)
        if not line:
            raise VolumeError("QMP: QEMU closed the connection (is the VM still up?)")
        message: dict[str, Any] = json.loads(line)
        return message

    async def execute(self, command: str, **arguments: Any) -> Any:
        """Run a command; its ``return`` value, VolumeError with QEMU's message on error."""
        assert self._writer is not None
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self._writer.write(json.dumps(request).encode() + b"\n")
        await self._writer.drain()
        while True:
            try:
                reply = await self._message(QMP_TIMEOUT)
            except TimeoutError:
                raise VolumeError(f"QMP {command}: no answer in {QMP_TIMEOUT}s") from None
            if "event" in reply:
                self.events.append(reply)
            elif "error" in reply:
                raise VolumeError(f"QMP {command}: {reply['error'].get('desc', reply['error'])}")
            else:
                return reply.get("return")

    async def wait_event(self, name: str, device: str, within: float) -> None:
        def seen() -> bool:
            return any(
                e.get("event") == name and e.get("data", {}).get("device") == device
                for e in self.events
            )

        deadline = time.monotonic() + within
        while not seen():
            left = deadline - time.monotonic()
            if left <= 0:
                raise VolumeError(f"QMP: no {name} for {device} within {within:.0f}s")
            with contextlib.suppress(TimeoutError):
                self.events.append(await self._message(left))


def free_ports(pci: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """(qdev id, slot) of the PCIe root ports on bus 0 with no device behind them, from
    ``query-pci``, in slot order. Only ports with an id (ours: hp0, hp1, ...) are usable."""
    ports = []
    for bus in pci:
        if bus.get("bus") != 0:
            continue
        for dev in bus.get("devices", []):
            bridge = dev.get("pci_bridge")
            if bridge is None or not dev.get("qdev_id"):
                continue
            if not bridge.get("devices"):
                ports.append((dev["qdev_id"], dev["slot"]))
    return sorted(ports, key=lambda port: port[1])


@dataclass
class Attached:
    """A volume plugged into the VM: what the container needs and what to unplug."""

    volume: Volume
    node: str  # the block node's name
    device: str  # the virtio-blk device's id
    storage: agent_pb2.Storage
    mount: oci_pb2.Mount


@dataclass
class Volumes:
    """The volumes of one container, attached in order and detached in reverse."""

    qmp_socket: Path
    container_id: str
    attached: list[Attached] = field(default_factory=list)

    async def attach(self, volumes: list[Volume]) -> None:
        checked = [(volume, file_system(volume.image)) for volume in volumes]
        for index, (volume, fstype) in enumerate(checked):
            await self._attach_one(index, volume, fstype)

    async def _attach_one(self, index: int, volume: Volume, fstype: str) -> None:
        tag = secrets.token_hex(6)
        node, device = f"pkvol-{tag}", f"pkvol-{tag}-blk"
        readonly = {"read-only": True} if volume.readonly else {}
        async with QMP(self.qmp_socket) as qmp:
            await qmp.execute(
                "blockdev-add",
                driver="raw",
                **{"node-name": node},
                **readonly,
                file={"driver": "file", "filename": str(volume.image.resolve()), **readonly},
            )
            try:
                slot = await self._plug(qmp, node, device, volume)
            except BaseException:
                with contextlib.suppress(VolumeError, OSError, TimeoutError):
                    await qmp.execute("blockdev-del", **{"node-name": node})
                raise
        point = f"{STORAGE_BASE}/{self.container_id}-vol{index}"
        options = ["ro"] if volume.readonly else []
        self.attached.append(
            Attached(
                volume=volume,
                node=node,
                device=device,
                storage=agent_pb2.Storage(
                    driver="blk",
                    source=f"{slot:02x}/00",
                    fstype=fstype,
                    options=options,
                    mount_point=point,
                ),
                mount=oci_pb2.Mount(
                    destination=volume.destination,
                    source=point,
                    type="bind",
                    options=["rbind", *options],
                ),
            )
        )

    async def _plug(self, qmp: QMP, node: str, device: str, volume: Volume) -> int:
        """device_add on the first free root port that takes it; its slot."""
        ports = free_ports(await qmp.execute("query-pci"))
        errors = []
        for port, slot in ports:
            try:
                await qmp.execute(
                    "device_add", driver="virtio-blk-pci", drive=node, id=device, bus=port, addr="0"
                )
            except VolumeError as exc:  # taken meanwhile by another `run`: try the next
                errors.append(str(exc))
                continue
            return slot
        detail = f" ({'; '.join(errors)})" if errors else ""
        raise VolumeError(
            f"volume {volume.image}: no free PCIe root port in the VM{detail}; boot it with "
            "`kata-agent-ctl vm up --hotplug-ports N`, one port per volume in use"
        )

    async def detach(self) -> None:
        """Unplug every attached volume (the last first); the first failure is raised after
        all were tried."""
        failure: VolumeError | None = None
        while self.attached:
            item = self.attached.pop()
            try:
                await self._detach_one(item)
            except VolumeError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    async def _detach_one(self, item: Attached) -> None:
        async with QMP(self.qmp_socket) as qmp:
            await qmp.execute("device_del", id=item.device)
            await qmp.wait_event("DEVICE_DELETED", item.device, UNPLUG_TIMEOUT)
            await qmp.execute("blockdev-del", **{"node-name": item.node})


def usage_check(volumes: list[Volume], qmp_socket: Path | None) -> None:
    if volumes and qmp_socket is None:
        raise UsageError("--volume needs a VM target (--vm NAME): disks are hot-plugged over QMP")
