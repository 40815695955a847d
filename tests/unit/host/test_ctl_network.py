"""`vm up --net` and the guest NIC's configuration requests `run` sends."""

from __future__ import annotations

from pathlib import Path

import pytest

from pykata.host.ctl.main import parse_args
from pykata.host.ctl.network import GuestNet, interface_request, routes_request
from pykata.host.ctl.target import vm_target
from pykata.host.vm.state import VMState
from pykata.protocols import types_pb2

NET = GuestNet(mac="02:99:00:00:00:02", address="10.99.0.2/24", gateway="10.99.0.1")


def test_interface_request() -> None:
    iface = interface_request(NET).interface
    assert (iface.name, iface.device, iface.hwAddr, iface.mtu) == (
        "eth0",
        "eth0",
        "02:99:00:00:00:02",
        1500,
    )
    assert [(a.family, a.address, a.mask) for a in iface.IPAddresses] == [
        (types_pb2.v4, "10.99.0.2", "24")
    ]


def test_routes_request_link_route_then_default() -> None:
    routes = routes_request(NET).routes.Routes
    assert [(r.dest, r.gateway, r.device, r.scope, r.source) for r in routes] == [
        ("10.99.0.0/24", "", "eth0", 253, "10.99.0.2"),
        ("", "10.99.0.1", "eth0", 0, ""),
    ]


def test_vm_up_net_flag() -> None:
    args = parse_args(["vm", "up", "n", "--net", "10.99.0.2/24"])
    assert args.net == "10.99.0.2/24"
    assert parse_args(["vm", "up"]).net is None


@pytest.mark.parametrize("cidr", ["10.99.0.1/24", "10.99.0.2", "nonsense", "fd00::2/64"])
def test_vm_up_bad_net_is_a_usage_error(cidr: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["vm", "up", "--net", cidr])
    assert exit_info.value.code == 2
    assert "--net" in capsys.readouterr().err


def test_vm_target_carries_the_nic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    base = dict(
        agent_address="hvsock:///w/vsock.sock:1024",
        shared_dir="/s",
        console_log="/w/console.log",
        workdir="/w",
        accel="tcg",
        pids={"qemu": 1, "netns": 2},
    )
    net = {"mac": NET.mac, "address": NET.address, "gateway": NET.gateway, "tap": "tap0"}
    VMState(name="with", net=net, **base).save()  # type: ignore[arg-type]
    VMState(name="without", **base).save()  # type: ignore[arg-type]
    assert vm_target("with").net == NET
    assert vm_target("without").net is None
