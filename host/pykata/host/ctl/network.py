"""The guest NIC of a VM started with ``vm up --net``: UpdateInterface, then UpdateRoutes.

The same sequence Kata's runtime sends for a pod's interface: the link found by its MAC,
renamed ``eth0`` with the address and MTU, then a link-scope route to its network and the
default route via the tap end (the network's first address, on the host side).
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass

from pykata.host.ctl.session import Session
from pykata.protocols import agent_pb2, types_pb2
from pykata.ttrpc.errors import NotFound

LINK_SCOPE = 253  # RT_SCOPE_LINK
# The agent loads virtio_net at boot: right after the first connection the link may not be
# there yet (it answers NOT_FOUND "Link not found", which Kata's runtime retries too).
LINK_WAIT = 30.0


@dataclass(frozen=True)
class GuestNet:
    mac: str
    address: str  # CIDR, e.g. 10.99.0.2/24
    gateway: str  # the tap end, e.g. 10.99.0.1
    name: str = "eth0"
    mtu: int = 1500


def interface_request(net: GuestNet) -> agent_pb2.UpdateInterfaceRequest:
    iface = ipaddress.ip_interface(net.address)
    address = types_pb2.IPAddress(
        family=types_pb2.v4, address=str(iface.ip), mask=str(iface.network.prefixlen)
    )
    return agent_pb2.UpdateInterfaceRequest(
        interface=types_pb2.Interface(
            device=net.name,
            name=net.name,
            IPAddresses=[address],
            mtu=net.mtu,
            hwAddr=net.mac,
        )
    )


def routes_request(net: GuestNet) -> agent_pb2.UpdateRoutesRequest:
    iface = ipaddress.ip_interface(net.address)
    link = types_pb2.Route(
        dest=str(iface.network), device=net.name, scope=LINK_SCOPE, source=str(iface.ip)
    )
    default = types_pb2.Route(gateway=net.gateway, device=net.name)
    return agent_pb2.UpdateRoutesRequest(routes=agent_pb2.Routes(Routes=[link, default]))


async def configure_guest_network(session: Session, net: GuestNet) -> None:
    deadline = time.monotonic() + LINK_WAIT
    while True:
        try:
            await session.agent("UpdateInterface", interface_request(net), types_pb2.Interface)
            break
        except NotFound:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
    await session.agent("UpdateRoutes", routes_request(net), agent_pb2.Routes)
