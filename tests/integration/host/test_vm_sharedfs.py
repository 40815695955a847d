"""The VM runner owns the mount of its shared folder: a start that fails takes it along."""

from __future__ import annotations

from pathlib import Path

import pytest

from pykata.host.vm.runner import VM, VMError
from pykata.host.vm.sharedfs import is_mount_point, make_shared_mount

pytestmark = pytest.mark.root


async def test_failed_start_removes_the_shared_mount(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    make_shared_mount(shared)  # as a killed earlier user of the folder leaves it
    # virtiofsd refuses a socket path beyond the 107 bytes of a unix socket name.
    workdir = tmp_path / ("w" * 110)
    vm = VM(
        tmp_path / "vmlinuz", tmp_path / "initrd", shared_dir=shared, workdir=workdir, accel="tcg"
    )
    with pytest.raises(VMError, match="virtiofsd exited"):
        await vm.start()
    assert not is_mount_point(shared)
    assert shared.is_dir()
