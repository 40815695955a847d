"""Block storages: a hot-plugged disk, found in the guest, then mounted like any storage.

Drivers (Kata's names): ``blk`` and ``virtio-blk-pci`` (``source`` is a PCI path such as
``02/00``, or already a ``/dev`` block node), ``mmioblk`` (``source`` is ``/dev/vdX``),
``scsi`` (``source`` is ``<target>:<lun>``) and ``nvdimm`` (``source`` is ``/dev/pmemN``,
mounted with ``dax`` when the file system and the device support it). ``fstype`` is required:
the guest has no blkid-style probing in the mount path.
"""

from __future__ import annotations

import os
import stat

from pykata.agent.device import blockdev
from pykata.agent.device.registry import Devices
from pykata.agent.storage.manager import (
    Attached,
    StorageSpec,
    mount_at,
    prepare_mount_point,
    undone_on_error,
)
from pykata.agent.storage.options import fs_mount_options

DAX_FILESYSTEMS = ("ext4", "xfs")


def mount_disk(spec: StorageSpec, node: str, extra_options: tuple[str, ...] = ()) -> Attached:
    flags, data = fs_mount_options([*spec.options, *extra_options])
    if not spec.fstype:
        raise ValueError(f"block storage {node} needs an fstype")
    if not stat.S_ISBLK(os.stat(node).st_mode):
        raise ValueError(f"{node} is not a block device")
    attached = Attached(spec.mount_point, created=prepare_mount_point(spec.mount_point))
    with undone_on_error(attached):
        mount_at(spec.mount_point, node, spec.fstype, flags, data)
        attached.mounted = True
    return attached


async def attach_pci(devices: Devices, spec: StorageSpec, cid: str | None) -> Attached:
    if spec.source.startswith(blockdev.DEV):
        node = spec.source
    else:
        node = await blockdev.pci_disk(devices, spec.source)
    return mount_disk(spec, node)


async def attach_mmio(devices: Devices, spec: StorageSpec, cid: str | None) -> Attached:
    return mount_disk(spec, await blockdev.named_disk(devices, spec.source, "mmioblk"))


async def attach_scsi(devices: Devices, spec: StorageSpec, cid: str | None) -> Attached:
    return mount_disk(spec, await blockdev.scsi_disk(devices, spec.source))


def supports_dax(node: str, sysfs: str = "/sys") -> bool:
    """The pmem device offers direct access (its queue says so)."""
    try:
        with open(f"{sysfs}/class/block/{os.path.basename(node)}/queue/dax") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def dax_options(spec: StorageSpec, node: str, sysfs: str = "/sys") -> tuple[str, ...]:
    wanted = any(o.split("=")[0] == "dax" for opt in spec.options for o in opt.split(","))
    if wanted or spec.fstype not in DAX_FILESYSTEMS or not supports_dax(node, sysfs):
        return ()
    return ("dax",)


async def attach_nvdimm(devices: Devices, spec: StorageSpec, cid: str | None) -> Attached:
    node = await blockdev.named_disk(devices, spec.source, "nvdimm")
    return mount_disk(spec, node, dax_options(spec, node, devices.sysfs))
