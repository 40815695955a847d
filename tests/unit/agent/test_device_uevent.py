"""Uevents: the kernel's netlink message and libudev's properties."""

from __future__ import annotations

from pykata.agent.device.uevent import Uevent, from_properties, parse

DEVPATH = "/devices/pci0000:00/0000:00:02.0/virtio1/block/vda"


def test_parse_kernel_message() -> None:
    message = (
        f"add@{DEVPATH}\0ACTION=add\0DEVPATH={DEVPATH}\0SUBSYSTEM=block\0"
        "MAJOR=254\0MINOR=0\0DEVNAME=vda\0DEVTYPE=disk\0SEQNUM=1234\0"
    ).encode()
    assert parse(message) == Uevent("add", DEVPATH, "block", "vda", 1234)


def test_parse_ignores_what_is_not_a_kernel_uevent() -> None:
    assert parse(b"libudev\0\xfe\xed\xca\xfe") is None
    assert parse(b"add@/devices/x\0SUBSYSTEM=block\0") is None  # no ACTION/DEVPATH
    assert parse(b"") is None


def test_properties_from_libudev() -> None:
    event = from_properties(
        {"ACTION": "remove", "DEVPATH": DEVPATH, "SUBSYSTEM": "block", "DEVNAME": "/dev/vda"}
    )
    assert event == Uevent("remove", DEVPATH, "block", "vda", 0)
    assert from_properties({"ACTION": "add", "DEVPATH": "/devices/cpu"}).devname == ""
