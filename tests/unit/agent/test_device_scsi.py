"""SCSI addresses: parsing, host-independent matching of the disk, bus rescans."""

from __future__ import annotations

from pathlib import Path

import pytest

from pykata.agent.device.scsi import ScsiAddress, matches, parse_address, rescan
from pykata.agent.device.uevent import Uevent
from pykata.agent.errors import InvalidArgument

HOST = "/devices/pci0000:00/0000:00:05.0/virtio3/host{h}/target{h}:0:{t}/{h}:0:{t}:{l}"


def disk(host: int, target: int, lun: int, name: str, part: str = "") -> Uevent:
    devpath = HOST.format(h=host, t=target, l=lun) + f"/block/{name}"
    if part:
        devpath += f"/{part}"
    return Uevent("add", devpath, "block", part or name)


def test_parse() -> None:
    assert parse_address("0:0") == ScsiAddress(0, 0)
    assert parse_address("12:3") == ScsiAddress(12, 3)
    for bad in ("", "0", "0:0:0", "a:b", "-1:0"):
        with pytest.raises(InvalidArgument):
            parse_address(bad)


def test_matches_on_any_host() -> None:
    address = parse_address("1:2")
    assert matches(address, disk(0, 1, 2, "sda"))
    assert matches(address, disk(7, 1, 2, "sdc"))
    assert not matches(address, disk(0, 2, 1, "sda"))
    assert not matches(address, disk(0, 11, 2, "sda"))
    assert not matches(address, disk(0, 1, 2, "sda", part="sda1"))
    assert not matches(address, Uevent("remove", disk(0, 1, 2, "sda").devpath, "block", "sda"))
    assert not matches(address, Uevent("add", disk(0, 1, 2, "sda").devpath, "scsi_disk", "sda"))


def test_rescan_asks_every_host(tmp_path: Path) -> None:
    for host in ("host0", "host1"):
        (tmp_path / "class" / "scsi_host" / host).mkdir(parents=True)
    rescan(ScsiAddress(3, 1), str(tmp_path))
    for host in ("host0", "host1"):
        assert (tmp_path / "class" / "scsi_host" / host / "scan").read_text() == "0 3 1"
    rescan(ScsiAddress(3, 1), str(tmp_path / "none"))  # no SCSI hosts: nothing to ask
