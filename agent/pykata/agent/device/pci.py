"""Kata's PCI paths (``02/03``: slot 02 on the root bus, a bridge there, slot 03 behind it)
and where such a device lives in sysfs.

A path element is ``SS`` or ``SS.F`` (hex slot 0..1f, function 0..7). Each element but the
last is a bridge; the bus behind it is read from the bridge's ``pci_bus/`` directory (or, when
the kernel did not make one, from the addresses of its children), so ``02/03`` may become
``/devices/pci0000:00/0000:00:02.0/0000:01:03.0``. A first element of 0x20 or more in a path of
three or more is a pxb-pcie root complex (``20/00/02``), as the Kata runtime writes them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from pykata.agent.errors import InvalidArgument, NotFound

SLOT_MAX = 0x1F
FUNCTION_MAX = 0x7
PXB_ROOT_MIN = 0x20
_HEX = re.compile(r"[0-9a-fA-F]{1,2}")
_ADDRESS = re.compile(r"([0-9a-f]{4}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])")


@dataclass(frozen=True)
class SlotFunction:
    slot: int
    function: int = 0

    def __str__(self) -> str:
        return f"{self.slot:02x}.{self.function:x}"


def parse_slot_function(text: str) -> SlotFunction:
    slot, sep, function = text.partition(".")
    if not _HEX.fullmatch(slot) or (sep and not re.fullmatch(r"[0-7]", function)):
        raise InvalidArgument(f"PCI path element {text!r} is not SS or SS.F")
    value = SlotFunction(int(slot, 16), int(function or "0", 16))
    if value.slot > SLOT_MAX:
        raise InvalidArgument(f"PCI slot {slot} out of range 00..1f")
    return value


@dataclass(frozen=True)
class PciPath:
    root_complex: str  # "00", or a pxb-pcie bus such as "20"
    elements: tuple[SlotFunction, ...]

    def __str__(self) -> str:
        return "/".join(str(e) for e in self.elements)


def parse_pci_path(text: str) -> PciPath:
    parts = text.split("/")
    if not text or any(not p for p in parts):
        raise InvalidArgument(f"invalid PCI path {text!r}")
    root = "00"
    if len(parts) >= 3 and _HEX.fullmatch(parts[0]) and int(parts[0], 16) >= PXB_ROOT_MIN:
        root, parts = f"{int(parts[0], 16):02x}", parts[1:]
    return PciPath(root, tuple(parse_slot_function(p) for p in parts))


def root_bus_path(root_complex: str = "00") -> str:
    """The root bus's directory below sysfs (x86: ACPI's pci0000:<bus>)."""
    return f"/devices/pci0000:{root_complex}"


def _bus_behind(bridge: str) -> str:
    """``DDDD:BB`` of the bus behind the bridge directory ``bridge``."""
    pci_bus = os.path.join(bridge, "pci_bus")
    if os.path.isdir(pci_bus):
        buses = os.listdir(pci_bus)
        if len(buses) != 1:
            raise NotFound(f"{bridge} has {len(buses)} buses behind it, expected one")
        return buses[0]
    try:
        children = {
            m.group(1) + ":" + m.group(2)
            for n in os.listdir(bridge)
            if (m := _ADDRESS.fullmatch(n))
        }
    except FileNotFoundError:
        raise NotFound(f"no PCI device at {bridge}") from None
    if len(children) != 1:
        raise NotFound(f"cannot tell the bus behind the PCI bridge {bridge}")
    return children.pop()


def resolve(path: PciPath, sysfs: str = "/sys") -> str:
    """The device's directory below sysfs (``/devices/pci0000:00/0000:00:02.0/...``).

    Only the bridges are looked up: the device itself may not exist yet."""
    root = root_bus_path(path.root_complex)
    bus = f"0000:{path.root_complex}"
    relpath = root
    for index, element in enumerate(path.elements):
        relpath += f"/{bus}:{element}"
        if index < len(path.elements) - 1:
            bus = _bus_behind(sysfs + relpath)
    return relpath
