"""Waiting for a device: found by the sysfs scan, by a later uevent, or DeadlineExceeded."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pykata.agent.device import blockdev
from pykata.agent.device.registry import Devices, scan_block_devices
from pykata.agent.device.uevent import Uevent
from pykata.agent.errors import DeadlineExceeded

PCI_DEVICE = "/devices/pci0000:00/0000:00:02.0"
DISK = f"{PCI_DEVICE}/virtio1/block/vda"


class FakeListener:
    def __init__(self) -> None:
        self.started = 0

    @property
    def running(self) -> bool:
        return self.started > 0

    def start(self) -> None:
        self.started += 1

    def stop(self) -> None:
        pass


def devices(sysfs: Path, timeout: float = 2.0) -> tuple[Devices, FakeListener]:
    listener = FakeListener()
    return Devices(timeout, sysfs=str(sysfs), listener=listener), listener  # type: ignore[arg-type]


def add_block(sysfs: Path, devpath: str, name: str) -> None:
    real = sysfs / devpath.lstrip("/")
    real.mkdir(parents=True)
    (real / "uevent").write_text(f"MAJOR=254\nMINOR=0\nDEVNAME={name}\nDEVTYPE=disk\n")
    links = sysfs / "class" / "block"
    links.mkdir(parents=True, exist_ok=True)
    (links / name).symlink_to(real)


def test_scan(tmp_path: Path) -> None:
    add_block(tmp_path, DISK, "vda")
    add_block(tmp_path, DISK + "/vda1", "vda1")
    assert scan_block_devices(str(tmp_path)) == [
        Uevent("add", DISK, "block", "vda"),
        Uevent("add", DISK + "/vda1", "block", "vda1"),
    ]
    assert scan_block_devices(str(tmp_path / "none")) == []


async def test_scan_hit_needs_no_uevent(tmp_path: Path) -> None:
    add_block(tmp_path, DISK, "vda")
    add_block(tmp_path, DISK + "/vda1", "vda1")  # a partition is not the disk
    registry, listener = devices(tmp_path)
    assert await blockdev.pci_disk(registry, "02") == "/dev/vda"
    assert listener.started == 1  # listening before the scan: nothing falls in between


async def test_uevent_after_the_wait_started(tmp_path: Path) -> None:
    registry, _ = devices(tmp_path)
    waiting = asyncio.ensure_future(blockdev.pci_disk(registry, "02"))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    registry.deliver(
        Uevent("add", "/devices/pci0000:00/0000:00:03.0/virtio2/block/vdb", "block", "vdb")
    )
    registry.deliver(Uevent("change", DISK, "block", "vda"))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    registry.deliver(Uevent("add", DISK, "block", "vda"))
    assert await waiting == "/dev/vda"


async def test_a_remembered_uevent_is_found(tmp_path: Path) -> None:
    registry, _ = devices(tmp_path)
    registry.deliver(
        Uevent("add", "/devices/platform/a003e00.virtio_mmio/virtio0/block/vdb", "block", "vdb")
    )
    assert await blockdev.named_disk(registry, "/dev/vdb", "mmioblk") == "/dev/vdb"
    registry.deliver(
        Uevent("remove", "/devices/platform/a003e00.virtio_mmio/virtio0/block/vdb", "block", "vdb")
    )
    registry.hotplug_timeout = 0.05
    with pytest.raises(DeadlineExceeded, match="mmioblk disk /dev/vdb"):
        await blockdev.named_disk(registry, "/dev/vdb", "mmioblk")


async def test_timeout_names_the_device(tmp_path: Path) -> None:
    registry, _ = devices(tmp_path, timeout=0.05)
    with pytest.raises(
        DeadlineExceeded, match=r"after 0.05s waiting for virtio-blk disk at PCI path 02"
    ):
        await blockdev.pci_disk(registry, "02")
    with pytest.raises(DeadlineExceeded, match="SCSI disk 0:1"):
        await blockdev.scsi_disk(registry, "0:1")
    registry.deliver(Uevent("add", DISK, "block", "vda"))  # nobody waits any more: no error


async def test_scsi_wait_rescans_the_hosts(tmp_path: Path) -> None:
    host = tmp_path / "class" / "scsi_host" / "host0"
    host.mkdir(parents=True)
    registry, _ = devices(tmp_path)
    waiting = asyncio.ensure_future(blockdev.scsi_disk(registry, "0:1"))
    await asyncio.sleep(0.01)
    assert (host / "scan").read_text() == "0 0 1"
    registry.deliver(
        Uevent(
            "add",
            "/devices/pci0000:00/0000:00:05.0/virtio3/host2/target2:0:0/2:0:0:1/block/sdb",
            "block",
            "sdb",
        )
    )
    assert await waiting == "/dev/sdb"
