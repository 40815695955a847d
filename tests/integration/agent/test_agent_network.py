"""Network RPCs against the real agent in a network namespace of its own, with a veth pair
standing in for the NIC a hypervisor hot-plugs (the host's network is never touched).

The namespace starts as a Kata guest's does: the NIC present under a kernel name, down, no
address; the Go runtime's sequence (UpdateInterface, UpdateRoutes) must leave it configured
the way `ip` reports, and bad requests must change nothing.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pykata.protocols import agent_pb2, types_pb2
from pykata.ttrpc.errors import InvalidArgument, NotFound

NIC_MAC = "02:42:ac:11:00:02"
PEER_MAC = "02:42:ac:11:00:01"
# The NIC's other end goes to a second namespace, the "host side" the pod must reach.
SETUP = f"""
ip link add nic0 address {NIC_MAC} type veth peer name peer0 address {PEER_MAC}
ip link set peer0 netns "$PEER_PID"
nsenter -t "$PEER_PID" -n sh -euc 'ip addr add 172.17.0.1/16 dev peer0; ip link set peer0 up'
exec "$@"
"""


@pytest.fixture(scope="module")
def agent_address(work_dir: Path) -> str:
    return f"unix://{work_dir}/agent.sock"


@pytest.fixture(scope="module")
def peer_namespace() -> Iterator[int]:
    """A process holding the namespace of the NIC's far end."""
    holder = subprocess.Popen(["unshare", "--net", "--", "sleep", "3600"])
    try:
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


@pytest.fixture(scope="module")
def agent_env(peer_namespace: int) -> dict[str, str]:
    return {"PEER_PID": str(peer_namespace)}


@pytest.fixture(scope="module")
def agent_wrapper() -> list[str]:
    return ["unshare", "--net", "--", "sh", "-euc", SETUP, "sh"]


def ip(agent_process: subprocess.Popen[bytes], *args: str) -> Any:
    """`ip -json …` inside the agent's network namespace."""
    done = subprocess.run(
        ["nsenter", "-t", str(agent_process.pid), "-n", "ip", "-json", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout or "[]")


def pod_interface(**changes: Any) -> types_pb2.Interface:
    fields: dict[str, Any] = {
        "device": "eth0",
        "name": "eth0",
        "IPAddresses": [
            types_pb2.IPAddress(family=types_pb2.v4, address="172.17.0.2", mask="16"),
        ],
        "mtu": 1450,
        "hwAddr": NIC_MAC,
    }
    fields.update(changes)
    return types_pb2.Interface(**fields)


async def test_update_interface_renames_addresses_and_raises_the_link(
    agent: Any, agent_process: subprocess.Popen[bytes]
) -> None:
    reply = await agent.UpdateInterface(agent_pb2.UpdateInterfaceRequest(interface=pod_interface()))
    assert reply.name == "eth0" and reply.hwAddr == NIC_MAC
    (link,) = ip(agent_process, "addr", "show", "dev", "eth0")
    assert link["address"] == NIC_MAC and link["mtu"] == 1450
    assert "UP" in link["flags"]
    v4 = [a for a in link["addr_info"] if a["family"] == "inet"]
    assert [(a["local"], a["prefixlen"]) for a in v4] == [("172.17.0.2", 16)]
    assert "nic0" not in {link["ifname"] for link in ip(agent_process, "link", "show")}


async def test_update_routes_link_scope_first_then_gateway(
    agent: Any, agent_process: subprocess.Popen[bytes]
) -> None:
    routes = agent_pb2.Routes(
        Routes=[
            # The gateway route first on purpose: the agent must add the link route before it.
            types_pb2.Route(gateway="172.17.0.1", device="eth0"),
            types_pb2.Route(dest="172.17.0.0/16", device="eth0", scope=253, source="172.17.0.2"),
            types_pb2.Route(dest="10.96.0.0/12", gateway="172.17.0.1", device="eth0"),
        ]
    )
    reply = await agent.UpdateRoutes(agent_pb2.UpdateRoutesRequest(routes=routes))
    shown = {r["dst"]: r for r in ip(agent_process, "route", "show")}
    assert shown["default"]["gateway"] == "172.17.0.1"
    assert shown["172.17.0.0/16"]["scope"] == "link"
    assert shown["10.96.0.0/12"]["gateway"] == "172.17.0.1"
    answered = {(r.dest, r.gateway) for r in reply.Routes}
    assert {("", "172.17.0.1"), ("10.96.0.0/12", "172.17.0.1")} <= answered
    listed = await agent.ListRoutes(agent_pb2.ListRoutesRequest())
    assert {(r.dest, r.gateway, r.device) for r in listed.Routes} >= {
        ("", "172.17.0.1", "eth0"),
        ("172.17.0.0/16", "", "eth0"),
    }


def test_pod_reaches_its_gateway(agent_process: subprocess.Popen[bytes]) -> None:
    done = subprocess.run(
        [
            "nsenter",
            "-t",
            str(agent_process.pid),
            "-n",
            "busybox",
            "ping",
            "-c",
            "1",
            "-W",
            "5",
            "172.17.0.1",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


async def test_list_interfaces(agent: Any) -> None:
    reply = await agent.ListInterfaces(agent_pb2.ListInterfacesRequest())
    by_name = {i.name: i for i in reply.Interfaces}
    assert by_name["eth0"].hwAddr == NIC_MAC and by_name["eth0"].mtu == 1450
    assert ("172.17.0.2", "16") in {(a.address, a.mask) for a in by_name["eth0"].IPAddresses}
    assert "lo" in by_name


async def test_arp_neighbors(agent: Any, agent_process: subprocess.Popen[bytes]) -> None:
    neighbor = types_pb2.ARPNeighbor(
        toIPAddress=types_pb2.IPAddress(address="172.17.0.9"),
        device="eth0",
        lladdr="02:42:ac:11:00:09",
    )
    await agent.AddARPNeighbors(
        agent_pb2.AddARPNeighborsRequest(neighbors=agent_pb2.ARPNeighbors(ARPNeighbors=[neighbor]))
    )
    shown = {n["dst"]: n for n in ip(agent_process, "neigh", "show", "dev", "eth0")}
    assert shown["172.17.0.9"]["lladdr"] == "02:42:ac:11:00:09"
    assert "PERMANENT" in shown["172.17.0.9"]["state"]


async def test_unknown_mac_says_link_not_found(agent: Any) -> None:
    """The Go runtime retries UpdateInterface while the message says "Link not found"."""
    missing = pod_interface(name="eth9", hwAddr="02:00:00:00:99:99")
    with pytest.raises(NotFound, match="Link not found"):
        await agent.UpdateInterface(agent_pb2.UpdateInterfaceRequest(interface=missing))


@pytest.mark.parametrize(
    "bad",
    [
        {"hwAddr": "not-a-mac"},
        {"name": "x" * 16},
        {"IPAddresses": [types_pb2.IPAddress(family=types_pb2.v4, address="10.0.0.300", mask="8")]},
    ],
)
async def test_bad_interface_requests_change_nothing(
    agent: Any, agent_process: subprocess.Popen[bytes], bad: dict[str, Any]
) -> None:
    before = ip(agent_process, "addr", "show")
    with pytest.raises(InvalidArgument):
        await agent.UpdateInterface(
            agent_pb2.UpdateInterfaceRequest(interface=pod_interface(**bad))
        )
    assert ip(agent_process, "addr", "show") == before


async def test_bad_routes_change_nothing(
    agent: Any, agent_process: subprocess.Popen[bytes]
) -> None:
    before = ip(agent_process, "route", "show")
    routes = agent_pb2.Routes(
        Routes=[
            types_pb2.Route(dest="10.50.0.0/16", device="eth0"),
            types_pb2.Route(dest="10.60.0.0/99", device="eth0"),
        ]
    )
    with pytest.raises(InvalidArgument, match=r"10\.60\.0\.0/99"):
        await agent.UpdateRoutes(agent_pb2.UpdateRoutesRequest(routes=routes))
    assert ip(agent_process, "route", "show") == before
    missing = agent_pb2.Routes(Routes=[types_pb2.Route(dest="10.70.0.0/16", device="eth7")])
    with pytest.raises(NotFound, match="Link not found"):
        await agent.UpdateRoutes(agent_pb2.UpdateRoutesRequest(routes=missing))
    with pytest.raises(InvalidArgument):
        await agent.UpdateRoutes(agent_pb2.UpdateRoutesRequest())
