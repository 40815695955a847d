"""PCI paths: parsing, and resolution through bridges in a fake sysfs tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from pykata.agent.device.pci import PciPath, SlotFunction, parse_pci_path, resolve
from pykata.agent.errors import InvalidArgument, NotFound


def test_parse() -> None:
    assert parse_pci_path("02") == PciPath("00", (SlotFunction(2),))
    assert parse_pci_path("02/03.1") == PciPath("00", (SlotFunction(2), SlotFunction(3, 1)))
    assert parse_pci_path("1f") == PciPath("00", (SlotFunction(0x1F),))
    # A pxb-pcie root complex leads a path of three or more.
    assert parse_pci_path("20/00/02") == PciPath("20", (SlotFunction(0), SlotFunction(2)))
    assert parse_pci_path("02/00/01").root_complex == "00"
    assert str(parse_pci_path("02/3.1")) == "02.0/03.1"


@pytest.mark.parametrize("bad", ["", "/02", "02/", "20", "xx", "02.8", "123", "02//03", "0.0.0"])
def test_parse_refuses(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_pci_path(bad)


def bridge(sysfs: Path, relpath: str, bus: str | None) -> Path:
    device = sysfs / relpath.lstrip("/")
    device.mkdir(parents=True)
    if bus is not None:
        (device / "pci_bus" / bus).mkdir(parents=True)
    return device


def test_resolve_root_bus_device(tmp_path: Path) -> None:
    # The device itself need not exist yet: only bridges are read.
    assert resolve(parse_pci_path("02"), str(tmp_path)) == "/devices/pci0000:00/0000:00:02.0"


def test_resolve_through_bridges(tmp_path: Path) -> None:
    bridge(tmp_path, "/devices/pci0000:00/0000:00:02.0", "0000:01")
    bridge(tmp_path, "/devices/pci0000:00/0000:00:02.0/0000:01:03.0", "0000:05")
    assert resolve(parse_pci_path("02/03"), str(tmp_path)) == (
        "/devices/pci0000:00/0000:00:02.0/0000:01:03.0"
    )
    assert resolve(parse_pci_path("02/03/04.2"), str(tmp_path)) == (
        "/devices/pci0000:00/0000:00:02.0/0000:01:03.0/0000:05:04.2"
    )


def test_bridge_without_pci_bus_uses_its_children(tmp_path: Path) -> None:
    device = bridge(tmp_path, "/devices/pci0000:00/0000:00:10.0", None)
    (device / "0000:07:00.0").mkdir()
    (device / "0000:07:01.0").mkdir()
    (device / "power").mkdir()
    assert resolve(parse_pci_path("10/00"), str(tmp_path)).endswith("/0000:00:10.0/0000:07:00.0")


def test_missing_or_ambiguous_bridge(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        resolve(parse_pci_path("02/03"), str(tmp_path))
    device = bridge(tmp_path, "/devices/pci0000:00/0000:00:02.0", None)
    (device / "0000:01:00.0").mkdir()
    (device / "0000:02:00.0").mkdir()
    with pytest.raises(NotFound, match="bus behind"):
        resolve(parse_pci_path("02/03"), str(tmp_path))
