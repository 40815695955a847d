"""The VM's optional devices on QEMU's command line: the virtio-net NIC (tap options, the tap
end's address, MACs, namespaces) and the NVDIMM (memory slots, file backend, size check)."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest
from machine_spec import spec

from pykata.host.vm import netns, qemu
from pykata.host.vm.runner import VM, VMError


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


def test_no_nvdimm_no_memory_slots() -> None:
    cmd = qemu.command(spec())
    assert cmd[cmd.index("-m") + 1] == "512M"
    assert "nvdimm" not in " ".join(cmd)


def test_nvdimm_options() -> None:
    cmd = qemu.command(spec(nvdimm=Path("/img/pmem.img"), nvdimm_size=16 << 20))
    assert cmd[cmd.index("-machine") + 1] == "q35,accel=tcg,memory-backend=mem,nvdimm=on"
    assert cmd[cmd.index("-m") + 1] == "512M,slots=2,maxmem=528M"
    backend = "memory-backend-file,id=nvmem0,share=on,mem-path=/img/pmem.img,size=16777216"
    assert backend in cmd
    assert cmd[cmd.index(backend) + 1 : cmd.index(backend) + 3] == [
        "-device",
        "nvdimm,id=nv0,memdev=nvmem0",
    ]


def test_nvdimm_size_must_be_2mib_aligned(tmp_path: Path) -> None:
    image = tmp_path / "odd.img"
    image.write_bytes(b"x" * 4096)
    vm = VM(Path("/k"), Path("/i"), workdir=tmp_path / "vm", nvdimm=image, accel="tcg")
    with pytest.raises(VMError, match="not a multiple of 2 MiB"):
        asyncio.run(vm.start())
    assert not vm.procs
