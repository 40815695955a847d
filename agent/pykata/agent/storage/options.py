"""Kata's ``key=value`` storage options, and group ownership (``fsgid=``, a pod's fsGroup)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from pykata.agent.mount import (
    MS_BIND,
    MS_MOVE,
    MS_PRIVATE,
    MS_REC,
    MS_REMOUNT,
    MS_SHARED,
    MS_SLAVE,
    MS_UNBINDABLE,
    parse_options,
)

FSGID = "fsgid"
# What Kata grants the group on fsGroup storages: read(-write), plus search on directories.
RW_MASK = 0o660
RO_MASK = 0o440
EXEC_MASK = 0o110


# Flags that would make a storage something else than a new mount of its own file system: a
# bind (or move) of any guest path, a remount or a propagation change of what is there.
NOT_A_NEW_MOUNT = MS_BIND | MS_MOVE | MS_REMOUNT | MS_SHARED | MS_PRIVATE | MS_SLAVE | MS_UNBINDABLE


def fs_mount_options(options: Iterable[str], *, remount: bool = False) -> tuple[int, str]:
    """mount(2) flags and data for a storage that mounts a file system (ephemeral, virtio-fs,
    overlay, a disk): ``bind``, ``rbind``, ``remount`` (unless ``remount``) and propagation
    options are refused."""
    flags, data = parse_options(options)
    allowed = MS_REMOUNT | MS_REC if remount else 0
    if flags & NOT_A_NEW_MOUNT & ~allowed:
        raise ValueError(
            "options: bind, rbind, remount and propagation options are not storage options"
        )
    return flags, data


def option_map(options: list[str]) -> dict[str, str]:
    """``key=value`` options as a dict (as Kata: entries with exactly one ``=`` only)."""
    result = {}
    for option in options:
        parts = option.split("=")
        if len(parts) == 2:
            result[parts[0]] = parts[1]
    return result


def parse_gid(value: str) -> int:
    gid = int(value)
    if not 0 <= gid < 2**32:
        raise ValueError(f"gid {value} out of range")
    return gid


def set_fsgid(fd: int, gid: int) -> None:
    """Group-own the directory open as ``fd`` and make new files inherit the group."""
    os.fchown(fd, -1, gid)
    os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) | stat.S_ISGID)


def apply_fs_group(root: str, gid: int, *, read_only: bool, on_root_mismatch: bool) -> None:
    """Give group ``gid`` the whole tree below ``root`` (symlinks are not followed)."""
    mask = RO_MASK if read_only else RW_MASK
    st = os.lstat(root)
    if on_root_mismatch and st.st_gid == gid and st.st_mode & mask == mask:
        return
    _group_own(root, gid, mask)
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            _group_own(os.path.join(directory, name), gid, mask)


def _group_own(path: str, gid: int, mask: int) -> None:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        os.lchown(path, -1, gid)
        return
    os.chown(path, -1, gid)
    extra = EXEC_MASK | stat.S_ISGID if stat.S_ISDIR(st.st_mode) else 0
    os.chmod(path, stat.S_IMODE(st.st_mode) | mask | extra)
