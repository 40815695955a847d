"""Making a host folder the root of a container in the guest.

The folder is bind-mounted at <cid>/rootfs in the host folder the agent sees as
/run/kata-containers/shared/containers: for a VM the host side of the kataShared virtio-fs
share (as Kata does), for an agent on this host that very path.
"""

from __future__ import annotations

from pathlib import Path

from pykata.host.ctl.errors import CtlError, UsageError
from pykata.host.ctl.target import GUEST_SHARED_DIR, Target
from pykata.host.vm.sharedfs import MountError, is_mount_point, propagates, run_mount


class ShareError(CtlError):
    pass


def share_rootfs(target: Target, container_id: str, rootfs: Path) -> tuple[str, Path]:
    """Returns the root path the agent sees and the host mount made for it."""
    if target.shared_dir is None:
        raise UsageError(
            f"no shared folder is known for {target.address}: use a VM target or a unix:// agent"
        )
    if target.virtio_fs and not propagates(target.shared_dir):
        folder = target.shared_dir
        raise UsageError(
            f"{folder} is not below a shared mount, so virtiofsd would never see the "
            f"container's root: the VM runner makes it one as the VM starts; a VM started "
            f"otherwise needs `mount --bind {folder} {folder} && mount --make-shared {folder}` "
            f"before its virtiofsd starts"
        )
    folder = target.shared_dir / container_id
    target.shared_dir.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir()
    except FileExistsError:
        raise UsageError(f"container id {container_id} is in use ({folder} exists)") from None
    mount_point = folder / "rootfs"
    mount_point.mkdir()
    try:
        _run(["mount", "--bind", str(rootfs), str(mount_point)])
    except ShareError:
        mount_point.rmdir()
        folder.rmdir()
        raise
    return f"{GUEST_SHARED_DIR}/{container_id}/rootfs", mount_point


def unshare_rootfs(mount_point: Path) -> None:
    if is_mount_point(mount_point):
        _run(["umount", "--lazy", str(mount_point)])
    mount_point.rmdir()
    mount_point.parent.rmdir()


def _run(argv: list[str]) -> None:
    try:
        run_mount(argv)
    except MountError as exc:
        raise ShareError(str(exc)) from None
