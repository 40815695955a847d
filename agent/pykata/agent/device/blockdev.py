"""Where each kind of disk the runtime hot-plugs shows up, as a ``/dev`` path.

- ``blk`` (virtio-blk on PCI): a PCI path; the disk is ``<device>/virtio<N>/block/<name>``.
- ``mmioblk`` (virtio-blk on virtio-mmio): the runtime already names the node (``/dev/vdb``).
- ``scsi``: ``<target>:<lun>`` on any SCSI host (the hosts are asked to rescan).
- ``nvdimm`` (pmem): the runtime names the node (``/dev/pmem0``); it hangs below ACPI's NVDIMM
  bus (or a virtio-pmem device), always ``.../block/pmemN``.
"""

from __future__ import annotations

import re

from pykata.agent.device import pci, scsi
from pykata.agent.device.registry import Devices
from pykata.agent.device.uevent import ADD, Uevent
from pykata.agent.errors import InvalidArgument

DEV = "/dev/"


def pci_disk_matcher(relpath: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(relpath)}/virtio[0-9]+/block/[^/]+$")


def _is_disk(event: Uevent) -> bool:
    return event.action == ADD and event.subsystem == "block" and bool(event.devname)


async def pci_disk(devices: Devices, pci_path: str) -> str:
    """The node of the virtio-blk disk at PCI path ``pci_path``."""
    path = pci.parse_pci_path(pci_path)
    pattern = pci_disk_matcher(pci.resolve(path, devices.sysfs))
    event = await devices.wait(
        lambda e: _is_disk(e) and pattern.match(e.devpath) is not None,
        f"virtio-blk disk at PCI path {pci_path}",
    )
    return DEV + event.devname


def node_name(dev_path: str) -> str:
    if not dev_path.startswith(DEV) or "/" in dev_path[len(DEV) :] or dev_path == DEV:
        raise InvalidArgument(f"device path {dev_path!r} is not /dev/<name>")
    return dev_path[len(DEV) :]


async def named_disk(devices: Devices, dev_path: str, kind: str) -> str:
    """Wait for the disk the runtime named ``/dev/<name>`` (mmioblk, nvdimm)."""
    name = node_name(dev_path)
    suffix = f"/block/{name}"
    await devices.wait(
        lambda e: _is_disk(e) and e.devname == name and e.devpath.endswith(suffix),
        f"{kind} disk {dev_path}",
    )
    return dev_path


async def scsi_disk(devices: Devices, address_text: str) -> str:
    address = scsi.parse_address(address_text)
    event = await devices.wait(
        lambda e: scsi.matches(address, e),
        f"SCSI disk {address}",
        prepare=lambda: scsi.rescan(address, devices.sysfs),
    )
    return DEV + event.devname
