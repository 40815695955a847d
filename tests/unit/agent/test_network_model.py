"""Network requests are checked before anything in the guest changes."""

from __future__ import annotations

import pytest

from pykata.agent.errors import InvalidArgument
from pykata.agent.network.model import V4, V6, IPAddress, Route, parse_mac
from pykata.agent.network.netlink import Netlink, _check_ifname


def test_mac_addresses_are_normalised_or_refused() -> None:
    assert parse_mac("02:AB:00:00:0c:01") == "02:ab:00:00:0c:01"
    for bad in ("", "02:ab:00:00:0c", "02:ab:00:00:0c:zz", "02-ab-00-00-0c-01", "2:ab:0:0:c:1"):
        with pytest.raises(InvalidArgument):
            parse_mac(bad)


def test_ip_addresses() -> None:
    assert str(IPAddress(V4, "10.0.0.2", "24").network()) == "10.0.0.2/24"
    assert str(IPAddress(V6, "fd00::2", "64").network()) == "fd00::2/64"
    for bad in (IPAddress(V4, "10.0.0.300", "24"), IPAddress(V4, "10.0.0.2", "x")):
        with pytest.raises(InvalidArgument):
            bad.network()


@pytest.mark.parametrize("name", ["", "a" * 16, "eth/0", "eth 0"])
def test_bad_interface_names(name: str) -> None:
    with pytest.raises(InvalidArgument):
        _check_ifname(name)


def test_default_route_and_link_scope_route() -> None:
    default = Netlink._route_request(Route(gateway="10.0.0.1", device="eth0"))
    assert (default["dst"], default["dst_len"], default["gateway"]) == ("0.0.0.0", 0, "10.0.0.1")
    link = Netlink._route_request(
        Route(dest="10.0.0.0/24", device="eth0", scope=253, source="10.0.0.2")
    )
    assert (link["dst"], link["dst_len"], link["scope"], link["prefsrc"]) == (
        "10.0.0.0", 24, 253, "10.0.0.2",
    )  # fmt: skip
    v6 = Netlink._route_request(Route(dest="default", gateway="fd00::1", device="eth0", family=V6))
    assert (v6["dst"], v6["dst_len"], v6["family"]) == ("::", 0, 10)
    sourced = Netlink._route_request(Route(dest="10.1.0.0/16", source="10.0.0.0/8", device="e"))
    assert (sourced["src"], sourced["src_len"]) == ("10.0.0.0", 8)
    assert Netlink._route_request(Route(dest="10.0.0.0/8", device="e", mtu=1400))["metrics"]


@pytest.mark.parametrize(
    "route",
    [
        Route(dest="10.0.0.0/33", device="eth0"),
        Route(dest="fd00::/64", device="eth0", family=V4),
        Route(dest="10.0.0.0/8", gateway="not-an-ip", device="eth0"),
        Route(dest="10.0.0.0/8", device=""),
        Route(dest="10.0.0.0/8", device="eth0", family=7),
    ],
)
def test_bad_routes_are_refused(route: Route) -> None:
    with pytest.raises(InvalidArgument):
        Netlink._route_request(route)
