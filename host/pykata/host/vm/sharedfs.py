"""The host side of the folder a VM shares over virtio-fs: a mount point with shared propagation.

virtiofsd serves from its own mount namespace, a copy taken when it starts; a bind mount
made later in the host's namespace (a container's root below the folder) only reaches that
copy through a shared mount. Kata prepares its sandbox's shared folder the same way. The VM
runner makes the mount before virtiofsd starts and removes it once virtiofsd is gone.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path


class MountError(OSError):
    """A mount or umount command failed; the message carries its stderr."""


def make_shared_mount(folder: Path) -> None:
    """Make ``folder`` (created if missing) a mount point with shared propagation. Idempotent."""
    folder.mkdir(parents=True, exist_ok=True)
    if not is_mount_point(folder):
        run_mount(["mount", "--bind", str(folder), str(folder)])
    run_mount(["mount", "--make-shared", str(folder)])


def remove_shared_mount(folder: Path) -> None:
    """Undo make_shared_mount, with whatever is still mounted below it."""
    if is_mount_point(folder):
        run_mount(["umount", "--recursive", "--lazy", str(folder)])


def is_mount_point(path: Path) -> bool:
    # A bind mount from the same filesystem has the parent's st_dev: ask the mount table.
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


def run_mount(argv: list[str]) -> None:
    """Run a mount or umount command line; MountError when it fails."""
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise MountError(f"{' '.join(argv)}: {done.stderr.strip()}")


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
