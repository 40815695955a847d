"""The guest network as the host describes it: interfaces, routes, ARP neighbours.

Plain values with the Kata API's meaning (strings for addresses, as the host sends them);
the RPC layer converts them from and to protobuf.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from pykata.agent.errors import InvalidArgument

V4, V6 = 0, 1  # types.IPFamily


@dataclass(frozen=True)
class IPAddress:
    family: int
    address: str
    mask: str  # prefix length, as a decimal string

    def network(self) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        try:
            return ipaddress.ip_interface(f"{self.address}/{int(self.mask)}")
        except ValueError as exc:
            raise InvalidArgument(f"bad IP address {self.address}/{self.mask}: {exc}") from exc


@dataclass(frozen=True)
class Interface:
    name: str
    hw_addr: str
    mtu: int = 0
    addresses: list[IPAddress] = field(default_factory=list)
    device: str = ""
    device_path: str = ""
    type: str = ""
    raw_flags: int = 0


@dataclass(frozen=True)
class Route:
    dest: str = ""  # "" or "default": the default route
    gateway: str = ""
    device: str = ""
    source: str = ""
    scope: int = 0
    family: int = V4
    flags: int = 0
    mtu: int = 0


@dataclass(frozen=True)
class ARPNeighbor:
    to_address: str
    device: str
    lladdr: str = ""
    state: int = 0
    flags: int = 0


def parse_mac(text: str) -> str:
    """A MAC address in the kernel's spelling (lower case, colons)."""
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise InvalidArgument(f"bad MAC address {text!r}")
    try:
        return ":".join(f"{int(p, 16):02x}" for p in parts)
    except ValueError as exc:
        raise InvalidArgument(f"bad MAC address {text!r}") from exc
