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
    """Give group ``gid`` the whole tree below ``root``.

    The tree may be host-writable (a shared volume): it is walked through fds, iteratively,
    never following a symlink (links are group-owned themselves, with no change of mode) and
    never crossing into another mount; each entry is changed through an O_PATH fd of what
    was looked at, so an entry swapped for a link meanwhile is not followed either."""
    mask = RO_MASK if read_only else RW_MASK
    top = os.open(root, DIR_READ)
    try:
        st = os.fstat(top)
        if on_root_mismatch and st.st_gid == gid and st.st_mode & mask == mask:
            return
        _own_fd(top, gid, mask)
        stack = [os.dup(top)]
        while stack:
            directory = stack.pop()
            try:
                with os.scandir(directory) as entries:
                    names = [entry.name for entry in entries]
                for name in names:
                    child = _group_own(directory, name, gid, mask, st.st_dev)
                    if child is not None:
                        stack.append(child)
            finally:
                os.close(directory)
    finally:
        os.close(top)


DIR_READ = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _own_fd(fd: int, gid: int, mask: int) -> None:
    """chown/chmod what the O_PATH (or ordinary) ``fd`` is, through its /proc name."""
    st = os.fstat(fd)
    path = f"/proc/self/fd/{fd}"
    os.chown(path, -1, gid)
    extra = EXEC_MASK | stat.S_ISGID if stat.S_ISDIR(st.st_mode) else 0
    os.chmod(path, stat.S_IMODE(st.st_mode) | mask | extra)


def _group_own(parent: int, name: str, gid: int, mask: int, dev: int) -> int | None:
    """Group-own ``name``; an fd to walk into when it is a directory of the same mount."""
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if stat.S_ISLNK(st.st_mode):
            os.chown(name, -1, gid, dir_fd=parent, follow_symlinks=False)
            return None
        if st.st_dev != dev:
            return None  # another mount below the storage: not its content
        _own_fd(fd, gid, mask)
        if stat.S_ISDIR(st.st_mode):
            return os.open(name, DIR_READ, dir_fd=parent)
        return None
    finally:
        os.close(fd)
