"""The guest's links, addresses, routes and neighbours through rtnetlink (pyroute2's async API).

pyroute2 is imported on first use: it costs ~12 MB of RSS and a guest without network RPCs
never needs it. Every operation holds one lock, as the Rust agent holds its sandbox lock:
renames and route replacement must not interleave.
"""

from __future__ import annotations

import asyncio
import errno
import importlib
import importlib.util
import ipaddress
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pykata.agent import lazyimport, log
from pykata.agent.errors import Internal, InvalidArgument, NotFound, Unavailable
from pykata.agent.network.model import V4, V6, ARPNeighbor, Interface, IPAddress, Route, parse_mac

if TYPE_CHECKING:
    from pyroute2 import AsyncIPRoute

logger = log.get("network")

AF_INET, AF_INET6 = 2, 10
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RTN_UNICAST = 1
IFF_UP = 0x1
IFF_NOARP = 0x80
NUD_PERMANENT = 0x80
IFNAMSIZ = 16
_FAMILY = {V4: AF_INET, V6: AF_INET6}


def _ipv6_enabled(conf: Path = Path("/proc/sys/net/ipv6/conf")) -> bool:
    for which in ("all", "default"):
        try:
            if (conf / which / "disable_ipv6").read_text().strip() == "0":
                return True
        except OSError:
            continue
    return False


def _check_ifname(name: str) -> None:
    if not name or len(name) >= IFNAMSIZ or "/" in name or any(c.isspace() for c in name):
        raise InvalidArgument(f"bad interface name {name!r}")


def _netlink_errno(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else None


def load_pyroute2() -> ModuleType:
    """pyroute2's rtnetlink client without the package's own __init__.

    That __init__ imports everything pyroute2 has, NDB with sqlite3 included (the guest image
    has no sqlite3, and it costs 6 MiB of RSS); the client needs none of it. Its rtnl probe
    module imports ssl for a TLS probe the agent never runs: ssl, blocked at start, is let in
    deferred, so it stays unloaded.
    """
    if "pyroute2" not in sys.modules:
        spec = importlib.util.find_spec("pyroute2")
        if spec is None:
            raise Unavailable("pyroute2 is not installed in the guest")
        sys.modules["pyroute2"] = importlib.util.module_from_spec(spec)
    lazyimport.unblock("ssl")
    return importlib.import_module("pyroute2.iproute.linux")


class Netlink:
    def __init__(self) -> None:
        self._ipr: AsyncIPRoute | None = None
        self._lock = asyncio.Lock()

    async def _route(self) -> AsyncIPRoute:
        if self._ipr is None:
            ipr = load_pyroute2().AsyncIPRoute()
            self._ipr = ipr
        return self._ipr

    async def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    async def _links(self) -> list[Any]:
        ipr = await self._route()
        return [link async for link in await ipr.link("dump")]

    async def _link_by(self, key: str, value: str | int) -> Any | None:
        for link in await self._links():
            found = link["index"] if key == "index" else link.get(key)
            if found == value:
                return link
        return None

    async def _find_link(self, key: str, value: str | int) -> Any:
        link = await self._link_by(key, value)
        if link is None:
            # The Go runtime retries UpdateInterface while the message says "Link not found".
            raise NotFound(f"Link not found ({key} {value})")
        return link

    async def update_interface(self, iface: Interface) -> Interface:
        _check_ifname(iface.name)
        mac = parse_mac(iface.hw_addr)
        networks = [a.network() for a in iface.addresses]
        async with self._lock:
            ipr = await self._route()
            link = await self._link_by("address", mac)
            if link is None:
                # A NIC that kept another MAC (a VM template's): retarget it by its name.
                named = await self._find_link("ifname", iface.name)
                await ipr.link("set", index=named["index"], address=mac)
                link = await self._find_link("address", mac)
            index = link["index"]
            if link["flags"] & IFF_UP:
                await ipr.link("set", index=index, state="down")
            ipv6 = _ipv6_enabled()
            for net in networks:
                if net.version == 6 and not ipv6:
                    continue  # as Kata: an IPv6 address on a v4-only stack is not an error
                try:
                    await ipr.addr(
                        "replace", index=index, address=str(net.ip), prefixlen=net.network.prefixlen
                    )
                except Exception as exc:
                    raise Internal(f"Failed to add address {net.ip}: {exc}") from exc
            # The requested name may be taken by another link: park that one meanwhile.
            parked = None
            old_name = link.get("ifname")
            if old_name != iface.name:
                holder = await self._link_by("ifname", iface.name)
                if holder is not None:
                    if holder["flags"] & IFF_UP:
                        await ipr.link("set", index=holder["index"], state="down")
                    await ipr.link("set", index=holder["index"], ifname=f"{iface.name}_temp")
                    parked = holder
            flags = link["flags"] | IFF_UP
            flags = flags | IFF_NOARP if iface.raw_flags & IFF_NOARP else flags & ~IFF_NOARP
            change: dict[str, Any] = {"ifname": iface.name, "flags": flags, "change": IFF_NOARP}
            if iface.mtu:
                change["mtu"] = iface.mtu
            try:
                await ipr.link("set", index=index, **change)
                await ipr.link("set", index=index, state="up")
            except Exception as exc:
                raise Internal(
                    f"Failure in LinkSetRequest for interface {iface.name}: {exc}"
                ) from exc
            if parked is not None:
                await ipr.link("set", index=parked["index"], ifname=old_name, state="up")
        logger.info("interface updated", extra={"interface": iface.name, "mac": mac})
        return iface

    async def list_interfaces(self) -> list[Interface]:
        async with self._lock:
            ipr = await self._route()
            result = []
            for link in await self._links():
                addrs = [a async for a in await ipr.addr("dump", index=link["index"])]
                result.append(
                    Interface(
                        name=link.get("ifname") or "",
                        hw_addr=link.get("address") or "",
                        mtu=link.get("mtu") or 0,
                        addresses=[
                            IPAddress(
                                V6 if a["family"] == AF_INET6 else V4,
                                a.get("address") or "",
                                str(a["prefixlen"]),
                            )
                            for a in addrs
                        ],
                        raw_flags=link["flags"],
                    )
                )
            return result

    async def update_routes(self, routes: list[Route]) -> list[Route]:
        # Routes without a gateway first: a gateway must be reachable when its route is added.
        ordered = [r for r in routes if not r.gateway] + [r for r in routes if r.gateway]
        requests = [self._route_request(r) for r in ordered]
        async with self._lock:
            ipr = await self._route()
            for route, request in zip(ordered, requests, strict=True):
                link = await self._find_link("ifname", route.device)
                try:
                    await ipr.route("replace", oif=link["index"], **request)
                except Exception as exc:
                    if _netlink_errno(exc) == errno.EEXIST:
                        continue
                    version = "v6" if request["family"] == AF_INET6 else "v4"
                    raise Internal(
                        f"Failed to add IP {version} route (src: {route.source}, dst: "
                        f"{route.dest}, gtw: {route.gateway}, Err: {exc})"
                    ) from exc
        logger.info("routes updated", extra={"count": len(ordered)})
        return await self.list_routes()

    @staticmethod
    def _route_request(route: Route) -> dict[str, Any]:
        """The rtnetlink attributes of one route; every string is checked before any change."""
        if route.family not in _FAMILY:
            raise InvalidArgument(f"bad route family {route.family}")
        family = _FAMILY[route.family]
        default = "::/0" if family == AF_INET6 else "0.0.0.0/0"
        try:
            dest = ipaddress.ip_network(
                default if route.dest in ("", "default") else route.dest, strict=False
            )
            request: dict[str, Any] = {
                "family": family,
                "dst": str(dest.network_address),
                "dst_len": dest.prefixlen,
                "table": RT_TABLE_MAIN,
                "proto": RTPROT_BOOT,
                "type": RTN_UNICAST,
                "scope": route.scope,
                "flags": route.flags,
            }
            if route.gateway:
                request["gateway"] = str(ipaddress.ip_address(route.gateway))
            if route.source:
                source = ipaddress.ip_interface(route.source)
                if source.network.prefixlen and "/" in route.source:
                    request["src"] = str(source.ip)
                    request["src_len"] = source.network.prefixlen
                else:
                    request["prefsrc"] = str(source.ip)
        except ValueError as exc:
            raise InvalidArgument(f"bad route {route}: {exc}") from exc
        if dest.version != (6 if family == AF_INET6 else 4):
            raise InvalidArgument(f"route {route.dest} is not of family {route.family}")
        if route.mtu:
            request["metrics"] = {"attrs": [["RTAX_MTU", route.mtu]]}
        if not route.device:
            raise InvalidArgument(f"route {route.dest or 'default'} names no device")
        return request

    async def list_routes(self) -> list[Route]:
        async with self._lock:
            ipr = await self._route()
            names = {link["index"]: link.get("ifname") or "" for link in await self._links()}
            result = []
            for family, kind in ((AF_INET, V4), (AF_INET6, V6)):
                for msg in [r async for r in await ipr.route("dump", family=family)]:
                    if msg.get("table") != RT_TABLE_MAIN:
                        continue
                    dst = msg.get("dst")
                    dest = f"{dst}/{msg['dst_len']}" if dst else ""
                    src = msg.get("src")
                    source = f"{src}/{msg['src_len']}" if src else msg.get("prefsrc") or ""
                    mtu = 0
                    metrics = msg.get("metrics")
                    if metrics is not None:
                        mtu = metrics.get("RTAX_MTU") or 0
                    result.append(
                        Route(
                            dest=dest,
                            gateway=msg.get("gateway") or "",
                            device=names.get(msg.get("oif"), ""),
                            source=source,
                            scope=msg["scope"],
                            family=kind,
                            flags=msg["flags"],
                            mtu=mtu,
                        )
                    )
            return result

    async def add_arp_neighbors(self, neighbors: list[ARPNeighbor]) -> None:
        for neighbor in neighbors:
            try:
                ipaddress.ip_address(neighbor.to_address)
            except ValueError as exc:
                raise InvalidArgument(f"bad ARP neighbor address {neighbor.to_address!r}") from exc
        async with self._lock:
            ipr = await self._route()
            for neighbor in neighbors:
                link = await self._find_link("ifname", neighbor.device)
                request: dict[str, Any] = {
                    "dst": neighbor.to_address,
                    "ifindex": link["index"],
                    "state": neighbor.state or NUD_PERMANENT,
                    "flags": neighbor.flags,
                }
                if neighbor.lladdr:
                    request["lladdr"] = parse_mac(neighbor.lladdr)
                try:
                    await ipr.neigh("replace", **request)
                except Exception as exc:
                    raise Internal(
                        f"Failed to add ARP neighbor {neighbor.to_address}: {exc}"
                    ) from exc
