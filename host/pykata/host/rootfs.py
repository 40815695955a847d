"""A minimal container root filesystem from Debian's busybox-static.

Used by the integration tests and the demo: /bin/busybox with a symlink per applet, an
/etc/passwd and /etc/group for root and nobody, and the empty directories an OCI runtime
mounts onto.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
EMPTY_DIRS = (
    "proc",
    "sys",
    "dev",
    "tmp",
    "run",
    "root",
    "etc",
    "bin",
    "sbin",
    "usr/bin",
    "usr/sbin",
    "var",
)
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"


def busybox_applets(busybox: Path = BUSYBOX) -> list[str]:
    """Applet paths as busybox installs them (e.g. ``bin/sh``, ``usr/bin/env``)."""
    done = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=True)
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def make_busybox_rootfs(dest: Path, busybox: Path = BUSYBOX) -> Path:
    """Populate ``dest`` (created if needed) and return it."""
    if not busybox.exists():
        raise FileNotFoundError(f"{busybox} not found: install Debian's busybox-static")
    dest.mkdir(parents=True, exist_ok=True)
    for name in EMPTY_DIRS:
        (dest / name).mkdir(parents=True, exist_ok=True)
    (dest / "tmp").chmod(0o1777)
    shutil.copy2(busybox, dest / "bin" / "busybox")
    for applet in busybox_applets(busybox):
        link = dest / applet
        if link.name == "busybox" or link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")
    (dest / "etc" / "passwd").write_text(PASSWD)
    (dest / "etc" / "group").write_text(GROUP)
    return dest
