"""CopyFile: files, directories and symlinks from the host, written only under the shared dir.

Every path component is opened relative to its parent with O_NOFOLLOW, so neither ``..`` nor
a symlink planted earlier (CopyFile may create symlinks) can lead a write outside
``/run/kata-containers/shared/containers``. Stricter than Kata, which resolves symlinks inside
the root: here a symlink in the middle of a target path is refused.

Regular files may arrive in chunks (``offset``); they are written to ``<name>.tmp`` and
renamed into place once ``file_size`` bytes are there.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat

from pykata.agent.errors import InvalidArgument
from pykata.agent.validation import CONTAINER_BASE

SHARED_DIR = f"{CONTAINER_BASE}/shared/containers"
DIR_MASK = 0o777
FILE_MASK = 0o7777
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _components(path: str, root: str) -> list[str]:
    if not path.startswith(root + "/"):
        raise InvalidArgument(f"CopyFile target {path!r} is not under {root}")
    parts = [p for p in path[len(root) + 1 :].split("/") if p not in ("", ".")]
    if not parts or ".." in parts or any("\0" in p for p in parts):
        raise InvalidArgument(f"invalid CopyFile target {path!r}")
    return parts


def _open_dir(parent: int, name: str, mode: int) -> int:
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, mode, dir_fd=parent)
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise InvalidArgument(f"{name} is not a directory (symlinks are not followed)") from exc
        raise


def _chown(fd: int, uid: int, gid: int) -> None:
    os.fchown(fd, uid if uid >= 0 else -1, gid if gid >= 0 else -1)


def _remove(parent: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=parent)
    except FileNotFoundError:
        return
    except IsADirectoryError:
        shutil.rmtree(name, dir_fd=parent)


def copy_file(
    path: str,
    *,
    file_size: int,
    file_mode: int,
    dir_mode: int,
    uid: int,
    gid: int,
    offset: int,
    data: bytes,
    root: str = SHARED_DIR,
) -> None:
    parts = _components(os.path.normpath(path), root)
    if offset < 0 or file_size < 0:
        raise InvalidArgument("negative offset or file size")
    kind = stat.S_IFMT(file_mode)
    if kind == stat.S_IFREG or kind == 0:
        if offset + len(data) > file_size:
            raise InvalidArgument(
                f"chunk at {offset} of {len(data)} bytes exceeds file size {file_size}"
            )
    elif kind not in (stat.S_IFDIR, stat.S_IFLNK):
        raise InvalidArgument(f"unsupported file type {kind:#o} in file_mode")
    os.makedirs(root, exist_ok=True)
    if os.path.realpath(root) != root:
        raise InvalidArgument(f"{root} is reached through a symlink")
    fds = [os.open(root, DIR_FLAGS)]
    try:
        for name in parts[:-1]:
            fds.append(_open_dir(fds[-1], name, dir_mode & DIR_MASK))
        parent, name = fds[-1], parts[-1]
        if len(fds) > 1:
            _chown(parent, uid, gid)
        if kind == stat.S_IFDIR:
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(name, dir_fd=parent)
            fd = _open_dir(parent, name, file_mode & DIR_MASK)
            try:
                os.fchmod(fd, file_mode & FILE_MASK)
                _chown(fd, uid, gid)
            finally:
                os.close(fd)
            return
        if offset == 0:
            _remove(parent, name)
        if kind == stat.S_IFLNK:
            os.symlink(os.fsdecode(data), name, dir_fd=parent)
            os.chown(
                name,
                uid if uid >= 0 else -1,
                gid if gid >= 0 else -1,
                dir_fd=parent,
                follow_symlinks=False,
            )
            return
        _write_chunk(parent, name, file_size, file_mode, uid, gid, offset, data)
    finally:
        for fd in reversed(fds):
            os.close(fd)


def _write_chunk(
    parent: int, name: str, size: int, mode: int, uid: int, gid: int, offset: int, data: bytes
) -> None:
    tmp = name + ".tmp"
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    if offset == 0:
        flags |= os.O_TRUNC
    try:
        fd = os.open(tmp, flags, mode & FILE_MASK, dir_fd=parent)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidArgument(f"{tmp} is a symlink") from exc
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidArgument(f"{tmp} is not a regular file")
        if data:
            os.pwrite(fd, data, offset)
        if os.fstat(fd).st_size != size:
            return  # more chunks to come
        os.fchmod(fd, mode & FILE_MASK)
        _chown(fd, uid, gid)
        os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
    finally:
        os.close(fd)
