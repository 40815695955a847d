"""The VM state file (`kata-agent-ctl vm up` -> vm.json) and the QEMU command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import machine_spec
import pytest

from pykata.host.vm import qemu, state


@pytest.fixture(autouse=True)
def runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    return tmp_path


def test_state_round_trip_and_listing(runtime_dir: Path) -> None:
    vm = state.VMState(
        name="a",
        agent_address=f"hvsock://{runtime_dir}/pykata/vms/a/vsock.sock:1024",
        shared_dir=str(state.default_shared_dir("a")),
        console_log=str(state.vm_dir("a") / "console.log"),
        workdir=str(state.vm_dir("a")),
        accel="tcg",
        pids={"qemu": 1},
    )
    vm.save()
    assert vm.path == runtime_dir / "pykata" / "vms" / "a" / "vm.json"
    assert state.load("a") == vm
    assert state.names() == ["a"]
    assert state.default_shared_dir("a") == (
        runtime_dir / "pykata" / "shared" / "sandboxes" / "a" / "shared"
    )
    vm.remove()
    assert state.names() == []
    with pytest.raises(FileNotFoundError):
        state.load("a")


@pytest.mark.parametrize("name", ["", ".", "..", "a/b"])
def test_bad_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="bad VM name"):
        state.vm_dir(name)


def test_process_alive_checks_the_command_line(tmp_path: Path) -> None:
    marker = tmp_path / "vm"
    script = "import time; print('up', flush=True); time.sleep(60)"
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(marker)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"  # exec'd by now
        assert state.process_alive(proc.pid, marker)
        assert not state.process_alive(proc.pid, tmp_path / "other-vm")  # a reused pid
        assert not state.process_alive(os.getpid(), marker)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
    assert not state.process_alive(proc.pid, marker)


def spec(**changes: object) -> qemu.MachineSpec:
    base = {"append": "agent.log=debug", "virtiofs_socket": Path("/w/virtiofsd.sock")}
    return machine_spec.spec(**(base | changes))


def test_qemu_command_shares_memory_with_vhost_user_backends() -> None:
    cmd = qemu.command(spec())
    joined = " ".join(cmd)
    assert "memory-backend-memfd,id=mem,size=512M,share=on" in joined
    assert "q35,accel=tcg,memory-backend=mem" in joined and "-cpu max" in joined
    assert "vhost-user-vsock-pci,chardev=vsock" in joined
    assert "socket,id=vsock,path=/w/vhost-vsock.sock" in joined
    assert "vhost-user-fs-pci,chardev=virtiofs,tag=kataShared" in joined
    assert cmd[cmd.index("-append") + 1] == "console=ttyS0 panic=1 init_on_alloc=0 agent.log=debug"


def test_qemu_command_with_kernel_vsock_and_kvm() -> None:
    joined = " ".join(qemu.command(spec(vsock=qemu.KernelVsock(5), accel="kvm")))
    assert "vhost-vsock-pci,guest-cid=5" in joined and "vhost-user-vsock" not in joined
    assert "-cpu host" in joined
    assert "virtiofs" in joined
    assert "vhost-user-fs" not in " ".join(qemu.command(spec(virtiofs_socket=None)))
