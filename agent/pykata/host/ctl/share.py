"""Making a host folder the root of a container in the guest.

For a VM the folder is bind-mounted into the host side of the kataShared virtio-fs share,
at <cid>/rootfs, where the guest sees it under /run/kata-containers/shared/containers/ as
with Kata. An agent running on the host itself sees the folder directly.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from pykata.host.ctl.errors import CtlError
from pykata.host.ctl.target import GUEST_SHARED_DIR, Target


class ShareError(CtlError):
    pass


def share_rootfs(target: Target, container_id: str, rootfs: Path) -> tuple[str, Path | None]:
    """Returns the root path the guest sees and the host mount made for it (None: none)."""
    if target.shared_dir is None:
        return str(rootfs.resolve()), None
    mount_point = target.shared_dir / container_id / "rootfs"
    mount_point.mkdir(parents=True, exist_ok=True)
    _run(["mount", "--bind", str(rootfs), str(mount_point)])
    return f"{GUEST_SHARED_DIR}/{container_id}/rootfs", mount_point


def unshare_rootfs(mount_point: Path) -> None:
    if mount_point.is_mount():
        _run(["umount", "--lazy", str(mount_point)])
    mount_point.rmdir()
    mount_point.parent.rmdir()


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise ShareError(f"{' '.join(argv)}: {done.stderr.strip()}")
