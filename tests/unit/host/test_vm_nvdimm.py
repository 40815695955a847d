"""The VM's NVDIMM: QEMU's memory slots, the file backend and the size check."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pykata.host.vm import qemu
from pykata.host.vm.runner import VM, VMError


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
