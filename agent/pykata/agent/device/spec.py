"""A container's ``devices`` (CreateContainer): the host's numbers in the spec become the
guest's.

The runtime writes the OCI spec with the host's major/minor of each device it passes; the same
disk has other numbers in the guest. As Kata's ``update_spec_devices``: each device is found in
the guest, its ``linux.devices`` entry (matched by container path) gets the guest's numbers,
device cgroup rules naming the host's type/major/minor are rewritten likewise, and an allow
rule for the guest device is added.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Any

from pykata.agent import log
from pykata.agent.device import blockdev
from pykata.agent.device.registry import Devices
from pykata.agent.errors import FailedPrecondition, InvalidArgument

logger = log.get("device")

PCI_BLOCK = ("blk", "virtio-blk", "virtio-blk-pci")
VFIO = ("vfio", "vfio-pci", "vfio-pci-gk", "vfio-ap", "vfio-ap-cold")


@dataclass(frozen=True)
class DeviceSpec:
    id: str = ""
    type: str = ""
    vm_path: str = ""
    container_path: str = ""
    options: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class GuestDevice:
    kind: str  # "b" or "c", as in the spec
    major: int
    minor: int


def guest_device(path: str) -> GuestDevice:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FailedPrecondition(f"device {path} does not exist in the guest") from None
    if stat.S_ISBLK(st.st_mode):
        kind = "b"
    elif stat.S_ISCHR(st.st_mode):
        kind = "c"
    else:
        raise FailedPrecondition(f"{path} is not a device node")
    return GuestDevice(kind, os.major(st.st_rdev), os.minor(st.st_rdev))


def check(device: DeviceSpec) -> None:
    if not device.type:
        raise InvalidArgument(f"device {device.id or device.vm_path!r} has no type")
    if device.type in VFIO:
        raise InvalidArgument(f"device type {device.type!r} is not supported (no VFIO)")
    if device.type not in (*PCI_BLOCK, "mmioblk", "scsi", "nvdimm"):
        raise InvalidArgument(f"unknown device type {device.type!r}")
    if not device.id and not device.vm_path:
        raise InvalidArgument(f"{device.type} device has neither id nor vm_path")
    if not device.container_path:
        raise InvalidArgument(
            f"{device.type} device {device.id or device.vm_path} has no container path"
        )


async def find(device: DeviceSpec, devices: Devices) -> str:
    """The guest node of ``device``, once it exists."""
    if device.type in PCI_BLOCK:
        return await blockdev.pci_disk(devices, device.id)
    if device.type == "scsi":
        return await blockdev.scsi_disk(devices, device.id)
    if not device.vm_path:
        raise InvalidArgument(f"{device.type} device {device.id} has no vm_path")
    return await blockdev.named_disk(devices, device.vm_path, device.type)


async def update_spec_devices(
    spec: dict[str, Any], requested: list[DeviceSpec], devices: Devices
) -> None:
    """Rewrite ``spec`` (OCI JSON, in place) for the guest's nodes of ``requested``."""
    if not requested:
        return
    for device in requested:
        check(device)
    found: dict[str, GuestDevice] = {}
    for device in requested:
        if device.container_path in found:
            raise InvalidArgument(f"two devices for {device.container_path}")
        found[device.container_path] = guest_device(await find(device, devices))
    linux = spec.setdefault("linux", {})
    # (type, host major, host minor) -> the guest's device
    by_host: dict[tuple[str, int, int], GuestDevice] = {}
    for entry in linux.get("devices", []):
        guest = found.get(entry.get("path", ""))
        if guest is None:
            continue
        # protobuf drops zeros: an absent major or minor was 0.
        host = (entry.get("type", ""), entry.get("major", 0), entry.get("minor", 0))
        if host in by_host:
            raise InvalidArgument(f"two devices with the host numbers {host[1]}:{host[2]}")
        by_host[host] = guest
        logger.info(
            "device rewritten",
            extra={
                "container_path": entry["path"],
                "host": f"{host[1]}:{host[2]}",
                "guest": f"{guest.major}:{guest.minor}",
            },
        )
        entry["major"], entry["minor"] = guest.major, guest.minor
    missing = set(found) - {e.get("path") for e in linux.get("devices", [])}
    if missing:
        raise InvalidArgument(f"devices missing from the OCI spec: {' '.join(sorted(missing))}")
    rules = linux.setdefault("resources", {}).setdefault("devices", [])
    for rule in rules:
        # Only rules naming one device are the host's numbers of it (Kata: both set).
        if "major" not in rule or "minor" not in rule:
            continue
        guest = by_host.get((rule.get("type", ""), rule["major"], rule["minor"]))
        if guest is not None:
            rule["major"], rule["minor"] = guest.major, guest.minor
    for guest in found.values():
        rules.append(
            {
                "allow": True,
                "type": guest.kind,
                "major": guest.major,
                "minor": guest.minor,
                "access": "rwm",
            }
        )
