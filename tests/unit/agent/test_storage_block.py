"""Block storages: registered by Kata's driver names, waiting for their disk, dax for pmem."""

from __future__ import annotations

from pathlib import Path

import pytest

from pykata.agent.device.registry import Devices
from pykata.agent.errors import DeadlineExceeded, InvalidArgument
from pykata.agent.storage.block import dax_options
from pykata.agent.storage.manager import StorageManager, StorageSpec


class Idle:
    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def test_driver_names() -> None:
    names = StorageManager().driver_names
    for driver in ("blk", "virtio-blk-pci", "mmioblk", "scsi", "nvdimm"):
        assert driver in names


async def test_a_missing_disk_times_out_and_leaves_nothing(tmp_path: Path) -> None:
    devices = Devices(0.05, sysfs=str(tmp_path / "sys"), listener=Idle())  # type: ignore[arg-type]
    manager = StorageManager(base=str(tmp_path), devices=devices)
    mount_point = tmp_path / "vol"
    spec = StorageSpec(driver="blk", source="02", fstype="ext4", mount_point=str(mount_point))
    with pytest.raises(DeadlineExceeded, match="PCI path 02"):
        await manager.add([spec])
    assert manager.refs(str(mount_point)) == 0
    assert not mount_point.exists()
    bad = StorageSpec(driver="scsi", source="zero", mount_point=str(mount_point))
    with pytest.raises(InvalidArgument, match="SCSI address"):
        await manager.add([bad])


def test_dax_only_where_fs_and_device_support_it(tmp_path: Path) -> None:
    queue = tmp_path / "class" / "block" / "pmem0" / "queue"
    queue.mkdir(parents=True)
    (queue / "dax").write_text("1\n")
    sysfs = str(tmp_path)

    def spec(fstype: str, *options: str) -> StorageSpec:
        return StorageSpec(
            driver="nvdimm", source="/dev/pmem0", fstype=fstype, options=list(options)
        )

    assert dax_options(spec("ext4", "ro"), "/dev/pmem0", sysfs) == ("dax",)
    assert dax_options(spec("xfs"), "/dev/pmem0", sysfs) == ("dax",)
    assert dax_options(spec("ext4", "ro,dax=never"), "/dev/pmem0", sysfs) == ()  # asked already
    assert dax_options(spec("vfat"), "/dev/pmem0", sysfs) == ()
    (queue / "dax").write_text("0\n")
    assert dax_options(spec("ext4"), "/dev/pmem0", sysfs) == ()
    assert dax_options(spec("ext4"), "/dev/pmem1", sysfs) == ()
