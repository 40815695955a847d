"""mount(2)/umount2(2) through ctypes, mount option parsing and the mount table.

No dependency on the ``mount`` binary: the initrd need not carry util-linux.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable

from pykata.agent.libc import last_error, libc

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24

MNT_DETACH = 0x2

# option -> (flags to clear, flags to set); the rest is passed as fs data.
FLAG_OPTIONS: dict[str, tuple[int, int]] = {
    "defaults": (0, 0),
    "ro": (0, MS_RDONLY),
    "rw": (MS_RDONLY, 0),
    "suid": (MS_NOSUID, 0),
    "nosuid": (0, MS_NOSUID),
    "dev": (MS_NODEV, 0),
    "nodev": (0, MS_NODEV),
    "exec": (MS_NOEXEC, 0),
    "noexec": (0, MS_NOEXEC),
    "sync": (0, MS_SYNCHRONOUS),
    "async": (MS_SYNCHRONOUS, 0),
    "dirsync": (0, MS_DIRSYNC),
    "remount": (0, MS_REMOUNT),
    "mand": (0, MS_MANDLOCK),
    "nomand": (MS_MANDLOCK, 0),
    "atime": (MS_NOATIME, 0),
    "noatime": (0, MS_NOATIME),
    "diratime": (MS_NODIRATIME, 0),
    "nodiratime": (0, MS_NODIRATIME),
    "bind": (0, MS_BIND),
    "rbind": (0, MS_BIND | MS_REC),
    "relatime": (0, MS_RELATIME),
    "norelatime": (MS_RELATIME, 0),
    "strictatime": (0, MS_STRICTATIME),
    "nostrictatime": (MS_STRICTATIME, 0),
    "private": (0, MS_PRIVATE),
    "rprivate": (0, MS_PRIVATE | MS_REC),
    "slave": (0, MS_SLAVE),
    "rslave": (0, MS_SLAVE | MS_REC),
    "shared": (0, MS_SHARED),
    "rshared": (0, MS_SHARED | MS_REC),
    "unbindable": (0, MS_UNBINDABLE),
    "runbindable": (0, MS_UNBINDABLE | MS_REC),
}


def parse_options(options: Iterable[str]) -> tuple[int, str]:
    """Split mount options into mount(2) flags and the comma-joined fs-specific data."""
    flags = 0
    data: list[str] = []
    for option in options:
        for item in option.split(","):
            item = item.strip()
            if not item:
                continue
            known = FLAG_OPTIONS.get(item)
            if known is None:
                data.append(item)
            else:
                clear, set_ = known
                flags = (flags & ~clear) | set_
    return flags, ",".join(data)


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount(source: str, target: str, fstype: str | None, flags: int = 0, data: str = "") -> None:
    """mount(2); raises OSError naming the target."""
    if libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data) if data else None) != 0:
        raise last_error(f"mount {source} on {target} ({fstype})", target)


def umount(target: str, flags: int = 0) -> None:
    if libc.umount2(_b(target), flags) != 0:
        raise last_error(f"umount {target}", target)


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    if "\\" not in field:
        return field
    out = bytearray()
    raw = field.encode()
    i = 0
    while i < len(raw):
        if raw[i] == 0x5C and i + 3 < len(raw) and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return os.fsdecode(bytes(out))


def mount_points(mountinfo: str = "/proc/self/mountinfo") -> list[tuple[str, str]]:
    """(mount point, fstype) of every mount, in mount order."""
    result = []
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, sep, right = line.partition(" - ")
            parts = left.split()
            if not sep or len(parts) < 5:
                continue
            result.append((_unescape(parts[4]), right.split()[0]))
    return result


def is_mounted(path: str) -> bool:
    path = os.path.normpath(path)
    return any(point == path for point, _ in mount_points())


def fstype_of(path: str) -> str | None:
    """The filesystem type of the topmost mount at exactly ``path``, if any."""
    path = os.path.normpath(path)
    found = None
    for point, fstype in mount_points():
        if point == path:
            found = fstype
    return found


def umount_all(target: str) -> None:
    """Unmount every mount stacked on ``target`` (EINVAL once nothing is left)."""
    while True:
        try:
            umount(target)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT):
                return
            if exc.errno == errno.EBUSY:
                umount(target, MNT_DETACH)
                continue
            raise
