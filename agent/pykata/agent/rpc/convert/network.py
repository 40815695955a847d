"""protobuf types.Interface / Route / ARPNeighbor <-> the network domain's values."""

from __future__ import annotations

from collections.abc import Iterable

from pykata.agent.network.model import ARPNeighbor, Interface, IPAddress, Route
from pykata.protocols import types_pb2


def interface_from_proto(msg: types_pb2.Interface) -> Interface:
    return Interface(
        name=msg.name,
        hw_addr=msg.hwAddr,
        mtu=msg.mtu,
        addresses=[IPAddress(a.family, a.address, a.mask) for a in msg.IPAddresses],
        device=msg.device,
        device_path=msg.devicePath,
        type=msg.type,
        raw_flags=msg.raw_flags,
    )


def interface_to_proto(iface: Interface) -> types_pb2.Interface:
    return types_pb2.Interface(
        device=iface.device,
        name=iface.name,
        IPAddresses=[
            types_pb2.IPAddress(family=a.family, address=a.address, mask=a.mask)  # type: ignore[arg-type]
            for a in iface.addresses
        ],
        mtu=iface.mtu,
        hwAddr=iface.hw_addr,
        devicePath=iface.device_path,
        type=iface.type,
        raw_flags=iface.raw_flags,
    )


def route_from_proto(msg: types_pb2.Route) -> Route:
    return Route(
        dest=msg.dest,
        gateway=msg.gateway,
        device=msg.device,
        source=msg.source,
        scope=msg.scope,
        family=msg.family,
        flags=msg.flags,
        mtu=msg.mtu,
    )


def routes_to_proto(routes: Iterable[Route]) -> list[types_pb2.Route]:
    return [
        types_pb2.Route(
            dest=r.dest,
            gateway=r.gateway,
            device=r.device,
            source=r.source,
            scope=r.scope,
            family=r.family,  # type: ignore[arg-type]
            flags=r.flags,
            mtu=r.mtu,
        )
        for r in routes
    ]


def neighbor_from_proto(msg: types_pb2.ARPNeighbor) -> ARPNeighbor:
    return ARPNeighbor(
        to_address=msg.toIPAddress.address,
        device=msg.device,
        lladdr=msg.lladdr,
        state=msg.state,
        flags=msg.flags,
    )
