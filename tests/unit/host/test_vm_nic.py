"""The VM's virtio-net NIC: QEMU's tap options, the tap end's address, MACs, namespaces."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from pykata.host.vm import netns, qemu


def spec(**changes: object) -> qemu.MachineSpec:
    base = dict(
        kernel=Path("/k"),
        initrd=Path("/i"),
        append="",
        accel="tcg",
        memory_mib=512,
        cpus=1,
        console_log=Path("/w/console.log"),
        qmp_socket=Path("/w/qmp.sock"),
        vsock=qemu.VhostUserVsock(Path("/w/vhost-vsock.sock")),
        virtiofs_socket=None,
    )
    return qemu.MachineSpec(**(base | changes))  # type: ignore[arg-type]


def test_no_nic_no_network_options() -> None:
    cmd = qemu.command(spec())
    assert "-netdev" not in cmd and "virtio-net" not in " ".join(cmd)


def test_tap_nic_options() -> None:
    cmd = qemu.command(spec(nic=qemu.TapNic("tap0", "02:00:00:00:00:01")))
    netdev = cmd[cmd.index("-netdev") + 1]
    assert netdev == "tap,id=net0,ifname=tap0,script=no,downscript=no,vhost=off"
    assert "virtio-net-pci,netdev=net0,mac=02:00:00:00:00:01" in cmd


@pytest.mark.parametrize(
    ("guest", "tap", "gateway"),
    [
        ("10.99.0.2/24", "10.99.0.1/24", "10.99.0.1"),
        ("192.168.7.200/16", "192.168.0.1/16", "192.168.0.1"),
        ("172.16.0.6/30", "172.16.0.5/30", "172.16.0.5"),
    ],
)
def test_host_end_is_the_first_address(guest: str, tap: str, gateway: str) -> None:
    assert netns.host_end(guest) == (tap, gateway)


@pytest.mark.parametrize(
    ("guest", "why"),
    [
        ("10.99.0.1/24", "host end"),
        ("10.99.0.255/24", "not a host address"),
        ("10.99.0.0/24", "not a host address"),
        ("10.99.0.2/31", "no room"),
        ("10.99.0.2", "prefix length"),
        ("fd00::2/64", "IPv4"),
        ("10.99.0.300/24", "does not appear"),
    ],
)
def test_host_end_refuses(guest: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        netns.host_end(guest)


def test_random_mac_is_local_unicast() -> None:
    macs = {netns.random_mac() for _ in range(20)}
    assert len(macs) == 20
    assert all(re.fullmatch(r"02(:[0-9a-f]{2}){5}", mac) for mac in macs)


def test_our_own_namespace_is_refused() -> None:
    assert not netns.is_own_namespace(os.getpid())
    with pytest.raises(ValueError, match="host's network namespace"):
        netns.wait_own_namespace(os.getpid(), within=0.05)
    with pytest.raises(ValueError, match="host's network namespace"):
        netns.ip(os.getpid(), "link", "show")


def test_link_names_of_our_namespace() -> None:
    assert "lo" in netns.link_names(os.getpid())
