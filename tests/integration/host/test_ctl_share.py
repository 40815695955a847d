"""Sharing a container root into a VM's shared folder: it must reach a mount namespace that
was copied before the bind mount was made, as virtiofsd's is."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from pykata.host.ctl.errors import UsageError
from pykata.host.ctl.share import share_rootfs, unshare_rootfs
from pykata.host.ctl.target import Target
from pykata.host.vm.sharedfs import make_shared_mount, propagates, remove_shared_mount

pytestmark = pytest.mark.root


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    folder = tmp_path / "rootfs"
    (folder / "bin").mkdir(parents=True)
    (folder / "bin" / "marker").write_text("x")
    return folder


def vm_target(shared: Path) -> Target:
    return Target(address="hvsock:///x.sock:1024", name="t", shared_dir=shared, virtio_fs=True)


def wait_own_namespace(pid: int) -> None:
    """Until pid has left our mount namespace: its copy must predate the bind mount."""
    ours = os.readlink("/proc/self/ns/mnt")
    for _ in range(500):
        if os.readlink(f"/proc/{pid}/ns/mnt") != ours:
            return
        time.sleep(0.01)
    pytest.fail(f"process {pid} never entered its own mount namespace")


def test_shared_root_reaches_an_earlier_namespace(tmp_path: Path, rootfs: Path) -> None:
    shared = tmp_path / "shared"
    make_shared_mount(shared)
    try:
        assert propagates(shared)
        holder = subprocess.Popen(["unshare", "--mount", "--propagation", "slave", "sleep", "60"])
        try:
            wait_own_namespace(holder.pid)
            root, mount = share_rootfs(vm_target(shared), "c1", rootfs)
            assert root == "/run/kata-containers/shared/containers/c1/rootfs"
            assert mount == shared / "c1" / "rootfs"
            seen = Path(f"/proc/{holder.pid}/root") / mount.relative_to("/") / "bin" / "marker"
            assert seen.read_text() == "x"
            unshare_rootfs(mount)
            assert not (shared / "c1").exists()
            assert (rootfs / "bin" / "marker").exists()  # the host folder itself is untouched
        finally:
            holder.kill()
            holder.wait()
    finally:
        remove_shared_mount(shared)
    assert not propagates(shared)


def test_unshared_folder_is_refused(tmp_path: Path, rootfs: Path) -> None:
    shared = tmp_path / "plain"
    shared.mkdir()
    with pytest.raises(UsageError, match="not below a shared mount"):
        share_rootfs(vm_target(shared), "c1", rootfs)
    assert not (shared / "c1").exists()
