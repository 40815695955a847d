"""Making a host folder the root of a container in the guest.

The folder is bind-mounted at <cid>/rootfs in the host folder the agent sees as
/run/kata-containers/shared/containers: for a VM the host side of the kataShared virtio-fs
share (as Kata does), for an agent on this host that very path.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from pykata.host.ctl.errors import CtlError, UsageError
from pykata.host.ctl.target import GUEST_SHARED_DIR, Target


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
            f"container's root: before the VM starts, `mount --bind {folder} {folder} && "
            f"mount --make-shared {folder}` (share.make_shared_mount)"
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


def make_shared_mount(folder: Path) -> None:
    """Before virtiofsd starts: make `folder` a mount point with shared propagation.

    virtiofsd serves from its own mount namespace, a copy taken when it starts; a bind
    mount made later in the host's namespace only reaches that copy through a shared
    mount (Kata prepares its sandbox's shared folder the same way). Idempotent.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if not is_mount_point(folder):
        _run(["mount", "--bind", str(folder), str(folder)])
    _run(["mount", "--make-shared", str(folder)])


def remove_shared_mount(folder: Path) -> None:
    """Undo make_shared_mount, with whatever is still mounted below it."""
    if is_mount_point(folder):
        _run(["umount", "--recursive", "--lazy", str(folder)])


def unshare_rootfs(mount_point: Path) -> None:
    # A bind mount from the same filesystem has the parent's st_dev: ask the mount table.
    if is_mount_point(mount_point):
        _run(["umount", "--lazy", str(mount_point)])
    mount_point.rmdir()
    mount_point.parent.rmdir()


def is_mount_point(path: Path) -> bool:
    target = os.path.realpath(path)
    return any(mount_point == target for mount_point, _ in _mounts())


def propagates(folder: Path) -> bool:
    """Whether mounts made below folder propagate to peers (its mount is a shared one)."""
    target = os.path.realpath(folder)
    depth, shared = -1, False
    for mount_point, is_shared in _mounts():
        holds = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        # The innermost mount decides; of two on one point, the later one is on top.
        if holds and len(mount_point) >= depth:
            depth, shared = len(mount_point), is_shared
    return shared


def _mounts() -> list[tuple[str, bool]]:
    """(mount point, shared propagation) per line of our mount table, in mount order."""
    with open("/proc/self/mountinfo") as mountinfo:
        table = []
        for line in mountinfo:
            fields = line.split()
            optional = fields[6 : fields.index("-")]
            table.append((_unescape(fields[4]), any(f.startswith("shared:") for f in optional)))
        return table


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise ShareError(f"{' '.join(argv)}: {done.stderr.strip()}")
