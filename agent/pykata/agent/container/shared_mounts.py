"""Kata's shared mounts: a mount made in one container, cloned into another as it is created.

CreateContainer may carry SharedMounts (the Kata runtime's ``shared_mounts`` setting):
``src_ctr`` names a container already in the sandbox by its CRI name (the
``io.kubernetes.cri.container-name`` annotation, or CRI-O's). Once ``src_path`` is a mount
point in that container (its application may make it after starting: waited for up to 10 s,
as the Rust agent does), that mount tree is cloned (``open_tree``, recursive) and attached at
``dst_path`` in the container being created, before its process starts (``move_mount``). A
source container not in the sandbox, or a path not mounted in time, leaves that entry out,
as in Kata; any other failure fails the creation.

Both paths come from the host: each is resolved inside its own container's root, below an fd
of that root taken from ``/proc/<pid>/root``, with no symlink followed (beneath.py), so
neither reaches the guest's own tree. The namespace switches happen in a throw-away thread
that first stops sharing the agent's filesystem attributes (``setns`` into a mount
namespace requires it); the event loop's thread never changes namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pykata.agent import beneath, blocking, log
from pykata.agent.errors import InvalidArgument
from pykata.agent.libc import last_error, libc
from pykata.agent.mount import mount_points

logger = log.get("container")

NAME_ANNOTATIONS = ("io.kubernetes.cri.container-name", "io.kubernetes.container.name")
MAX_SHARED_MOUNTS = 64
NAME_MAX = 253
WAIT_SECONDS = 10.0
POLL_SECONDS = 0.1
# Cloning and attaching: mkdir in a rootfs on a share may hang with its daemon.
CLONE_SECONDS = 30.0

CLONE_FS = 0x00000200
CLONE_NEWNS = 0x00020000
SYS_OPEN_TREE = 428  # the same number on every architecture (new syscalls are unified)
SYS_MOVE_MOUNT = 429
OPEN_TREE_CLONE = 0x1
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x04
MOVE_MOUNT_T_EMPTY_PATH = 0x40


@dataclass(frozen=True)
class SharedMount:
    name: str
    src_ctr: str
    src_path: str
    dst_ctr: str
    dst_path: str


def container_name(spec: dict[str, Any]) -> str:
    """The container's name in its pod, as CRI annotates it; empty outside Kubernetes."""
    annotations = spec.get("annotations") or {}
    return next((annotations[k] for k in NAME_ANNOTATIONS if annotations.get(k)), "")


def validate(mounts: Sequence[SharedMount]) -> list[SharedMount]:
    """The shared mounts of a request, checked: InvalidArgument naming the bad field."""
    if len(mounts) > MAX_SHARED_MOUNTS:
        raise InvalidArgument(f"shared_mounts: {len(mounts)} entries, at most {MAX_SHARED_MOUNTS}")
    for n, mount in enumerate(mounts):
        field = f"shared_mounts[{n}]"
        for key in ("name", "src_ctr", "dst_ctr"):
            value = getattr(mount, key)
            if len(value.encode()) > NAME_MAX or "\0" in value or "/" in value:
                raise InvalidArgument(f"{field}.{key}: not a container or mount name: {value!r}")
        if not mount.src_ctr:
            raise InvalidArgument(f"{field}.src_ctr: empty")
        for key in ("src_path", "dst_path"):
            path = getattr(mount, key)
            # ".." cannot climb above a container's root: "/../x" is "/x" there.
            if not beneath.lexical(path, "/", f"{field}.{key}", allow_root=True):
                raise InvalidArgument(f"{field}.{key}: the container's root itself: {path!r}")
    return list(mounts)


async def attach(mounts: Sequence[SharedMount], sources: Mapping[str, int], dst_pid: int) -> None:
    """Clone each mount from its source container (``sources``: CRI name -> init pid) into
    the mount namespace of ``dst_pid``, the created container's process."""
    for n, mount in enumerate(mounts):
        src_pid = sources.get(mount.src_ctr)
        extra = {"shared_mount": mount.name, "src_ctr": mount.src_ctr}
        if src_pid is None:
            logger.warning("shared mount skipped: no such container", extra=extra)
            continue
        if not await _wait_mounted(src_pid, mount.src_path):
            logger.warning("shared mount skipped: source not mounted in time", extra=extra)
            continue
        # A thread of its own (blocking.bounded): the namespaces it enters die with it.
        clone = functools.partial(_clone, src_pid, mount, dst_pid, f"shared_mounts[{n}]")
        await blocking.bounded(clone, CLONE_SECONDS, f"shared mount {mount.name}")
        logger.info("shared mount attached", extra={**extra, "dst_path": mount.dst_path})


async def _wait_mounted(pid: int, path: str) -> bool:
    deadline = time.monotonic() + WAIT_SECONDS
    while not is_mount_point(pid, path):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(POLL_SECONDS)
    return True


def is_mount_point(pid: int, path: str) -> bool:
    """Whether ``path`` is a mount point as process ``pid`` sees its root."""
    target = os.path.normpath(path)
    try:
        points = mount_points(f"/proc/{pid}/mountinfo")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return any(point == target for point, _ in points)


def _clone(src_pid: int, mount: SharedMount, dst_pid: int, field: str) -> None:
    # Every fd is taken before the first switch, while /proc is the agent's own.
    with contextlib.ExitStack() as stack:

        def opened(path: str, flags: int) -> int:
            fd = os.open(path, flags | os.O_CLOEXEC)
            stack.callback(os.close, fd)
            return fd

        src_ns = opened(f"/proc/{src_pid}/ns/mnt", os.O_RDONLY)
        src_root = opened(f"/proc/{src_pid}/root", os.O_PATH | os.O_DIRECTORY)
        dst_ns = opened(f"/proc/{dst_pid}/ns/mnt", os.O_RDONLY)
        dst_root = opened(f"/proc/{dst_pid}/root", os.O_PATH | os.O_DIRECTORY)
        if libc.unshare(CLONE_FS | CLONE_NEWNS) != 0:
            raise last_error("unshare")
        _setns(src_ns)
        src_parts = beneath.lexical(mount.src_path, "/", f"{field}.src_path")
        try:
            source = beneath.open_at(src_root, src_parts, os.O_PATH | os.O_DIRECTORY)
        except OSError as exc:
            raise InvalidArgument(
                f"{field}.src_path: {mount.src_path!r} cannot be opened in {mount.src_ctr} "
                f"without following a symlink: {exc.strerror}"
            ) from exc
        stack.callback(os.close, source)
        tree = _syscall(
            "open_tree",
            SYS_OPEN_TREE,
            ctypes.c_int(source),
            ctypes.c_char_p(b""),
            ctypes.c_uint(OPEN_TREE_CLONE | AT_RECURSIVE | AT_EMPTY_PATH | os.O_CLOEXEC),
        )
        stack.callback(os.close, tree)
        _setns(dst_ns)
        dst_parts = beneath.lexical(mount.dst_path, "/", f"{field}.dst_path")
        beneath.make_dirs_at(dst_root, dst_parts, f"{field}.dst_path", mount.dst_path, "/")
        target = beneath.open_at(dst_root, dst_parts, os.O_PATH | os.O_DIRECTORY)
        stack.callback(os.close, target)
        _syscall(
            "move_mount",
            SYS_MOVE_MOUNT,
            ctypes.c_int(tree),
            ctypes.c_char_p(b""),
            ctypes.c_int(target),
            ctypes.c_char_p(b""),
            ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH),
        )


def _setns(fd: int) -> None:
    if libc.setns(fd, CLONE_NEWNS) != 0:
        raise last_error("setns")


def _syscall(name: str, number: int, *args: Any) -> int:
    result = int(libc.syscall(ctypes.c_long(number), *args))
    if result < 0:
        raise last_error(name)
    return result
