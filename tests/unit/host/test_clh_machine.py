"""kata-clh's QEMU command line for a Kata VmConfig: pc machine, shared memfd memory, every
device on bus 0 in its own slot, TAP fds inherited."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pykata.host.clh import config as cfg
from pykata.host.clh.machine import VHOST_NET, QemuMachine

MIB = 1024 * 1024


def kata_config(tmp_path: Path) -> dict[str, Any]:
    kernel, initrd, disk = tmp_path / "vmlinuz", tmp_path / "initrd.img", tmp_path / "disk.img"
    for f in (kernel, initrd, disk):
        f.write_bytes(b"x")
    return {
        "payload": {"kernel": str(kernel), "initramfs": str(initrd), "cmdline": "panic=1 quiet"},
        "cpus": {"boot_vcpus": 1, "max_vcpus": 4},
        "memory": {"size": 2048 * MIB, "hotplug_size": 2048 * MIB, "shared": True},
        "fs": [{"tag": "kataShared", "socket": "/run/vc/vm/x/virtiofsd.sock", "queue_size": 1024}],
        "vsock": {"cid": 3, "socket": "/run/vc/vm/x/clh.sock"},
        "rng": {"src": "/dev/urandom"},
        "serial": {"mode": "Tty"},
        "console": {"mode": "Off"},
        "disks": [{"path": str(disk), "readonly": True, "id": "_disk0"}],
    }


def command(tmp_path: Path) -> tuple[list[str], tuple[int, ...], QemuMachine]:
    parsed = cfg.parse_vm_config(kata_config(tmp_path))
    net = cfg.Net(id="_net1", tap=None, mac="02:00:00:00:00:01", mtu=1500, num_queues=2, fds=(7,))
    parsed = cfg.VmConfig(**{**parsed.__dict__, "net": (net,)})
    machine = QemuMachine(tmp_path, accel="tcg")
    machine.accel = "tcg"
    cmd, fds = machine.command(parsed)
    return cmd, fds, machine


def values(cmd: list[str], flag: str) -> list[str]:
    return [cmd[i + 1] for i, arg in enumerate(cmd) if arg == flag]


def test_machine_memory_and_cpus(tmp_path: Path) -> None:
    cmd, _, _ = command(tmp_path)
    assert values(cmd, "-machine") == ["pc,accel=tcg,memory-backend=mem"]
    assert "memory-backend-memfd,id=mem,size=2048M,share=on" in values(cmd, "-object")
    assert values(cmd, "-m") == ["2048M,slots=8,maxmem=4096M"]
    assert values(cmd, "-smp") == ["1,maxcpus=4,sockets=1,cores=4,threads=1"]
    assert values(cmd, "-cpu") == ["max"]
    assert values(cmd, "-append") == ["panic=1 quiet"]
    assert values(cmd, "-serial") == ["chardev:serial"]


def test_devices_sit_on_bus_0_each_in_its_own_slot(tmp_path: Path) -> None:
    cmd, fds, machine = command(tmp_path)
    devices = values(cmd, "-device")
    drivers = [d.split(",")[0] for d in devices]
    assert drivers == [
        "vhost-user-fs-pci", "vhost-user-vsock-pci", "virtio-rng-pci", "virtio-net-pci",
        "virtio-blk-pci",
    ]  # fmt: skip
    slots = [int(re.search(r"addr=(0x[0-9a-f]+)", d).group(1), 16) for d in devices]  # type: ignore[union-attr]
    assert len(set(slots)) == len(slots) and min(slots) >= 2 and max(slots) <= 31
    assert {d: p.slot for d, p in machine.devices.items()}["_disk0"] == slots[-1]
    assert "tag=kataShared" in devices[0] and "queue-size=1024" in devices[0]
    assert "mac=02:00:00:00:00:01" in devices[3] and "host_mtu=1500" in devices[3]
    vhost = "on" if VHOST_NET.exists() else "off"
    assert values(cmd, "-netdev") == [f"tap,id=net1,fd=7,vhost={vhost}"]
    assert fds == (7,)
    blockdev = json.loads(values(cmd, "-blockdev")[0])
    assert blockdev["read-only"] is True and blockdev["file"]["filename"].endswith("disk.img")


def test_a_fixed_accelerator_is_used_as_given(tmp_path: Path) -> None:
    machine = QemuMachine(tmp_path, accel="kvm")
    assert machine._choose_accel(tmp_path / "vmlinuz") == "kvm"
