"""Target selection: a bare address, or a VM from the VM runner's state file."""

from __future__ import annotations

from pathlib import Path

import pytest

from pykata.host.ctl.errors import UsageError
from pykata.host.ctl.target import GUEST_SHARED_DIR, address_target, vm_target
from pykata.host.vm.state import VMState


def test_unix_agent_shares_this_hosts_folder() -> None:
    target = address_target("unix://@agent")
    assert target.shared_dir == Path(GUEST_SHARED_DIR)
    assert not target.virtio_fs and target.console_log is None
    # Without a VM, the host side of a vsock guest's share is unknown.
    assert address_target("vsock://3:1024").shared_dir is None
    assert address_target("unix://@a").name != address_target("unix://@b").name


def test_vm_target_from_state_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    with pytest.raises(UsageError, match="no running VM 'demo'"):
        vm_target("demo")
    state = VMState(
        name="demo",
        agent_address="hvsock:///w/vsock.sock:1024",
        shared_dir="/s/shared",
        console_log="/w/console.log",
        workdir="/w",
        accel="tcg",
        pids={"qemu": 1234},
    )
    state.save()
    target = vm_target("demo")
    assert target.address == "hvsock:///w/vsock.sock:1024"
    assert target.shared_dir == Path("/s/shared")
    assert target.virtio_fs
    assert target.console_log == Path("/w/console.log")
    # A new boot of the same VM starts with fresh CLI state.
    state.pids["qemu"] = 5678
    state.save()
    assert vm_target("demo").name != target.name
