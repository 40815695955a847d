"""CopyFile: files, directories and symlinks from the host, written only under the shared dir.

Every path component is opened relative to its parent with O_NOFOLLOW, so neither ``..`` nor
a symlink planted earlier (CopyFile may create symlinks) can lead a write outside
``/run/kata-containers/shared/containers``. Stricter than Kata, which resolves symlinks inside
the root: here a symlink in the middle of a target path is refused.

Regular files may arrive in chunks (``offset``); they are written to ``<name>.tmp`` and
renamed into place once ``file_size`` bytes are there (never into a file system mounted
below the shared dir); the existing file stays readable until
then. Symlinks are made aside and renamed into place too. A directory replaced by a file or a
symlink is deleted first, through fds and without recursion, and only when no mount lies
anywhere below it (FAILED_PRECONDITION otherwise, nothing deleted).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from pykata.agent import beneath
from pykata.agent.errors import InvalidArgument
from pykata.agent.mount import mount_points
from pykata.agent.validation import CONTAINER_BASE

SHARED_DIR = f"{CONTAINER_BASE}/shared/containers"
DIR_MASK = 0o777
FILE_MASK = 0o7777
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


FIELD = "CopyFileRequest.path"


def _components(path: str, root: str) -> list[str]:
    if "\0" in path:
        raise InvalidArgument(f"{FIELD}: invalid CopyFile target {path!r}")
    parts = beneath.lexical(path, root, FIELD)
    if not parts or ".." in parts:
        raise InvalidArgument(f"{FIELD}: invalid CopyFile target {path!r}")
    return parts


def _open_dir(parent: int, name: str, mode: int) -> int:
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, mode, dir_fd=parent)
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise InvalidArgument(
                f"{FIELD}: {name} is not a directory (symlinks are not followed)"
            ) from exc
        raise


def _chown(fd: int, uid: int, gid: int) -> None:
    os.fchown(fd, uid if uid >= 0 else -1, gid if gid >= 0 else -1)


def _replace(parent: int, tmp: str, name: str) -> None:
    """Rename ``tmp`` over ``name``; a directory there is deleted first, unless a mount lies
    anywhere in it (then nothing is deleted and the request fails)."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        try:
            beneath.remove_tree(parent, name, field=FIELD, mounts=[p for p, _ in mount_points()])
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=parent)
            raise
    os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)


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
    parts = _components(path, root)
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
    if kind != stat.S_IFDIR and len(os.fsencode(parts[-1])) > beneath.NAME_MAX - len(".tmp"):
        raise InvalidArgument(f"{FIELD}: the last name in {path!r} is too long")
    fds = [beneath.open_root(root, create=True)]
    try:
        dev = os.fstat(fds[0]).st_dev
        for name in parts[:-1]:
            fds.append(_open_dir(fds[-1], name, dir_mode & DIR_MASK))
            if os.fstat(fds[-1]).st_dev != dev:
                # As RESOLVE_NO_XDEV: a storage or a container root mounted below the shared
                # dir is not CopyFile's to write into.
                raise InvalidArgument(f"{FIELD}: {path!r} crosses into another mount")
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
        if kind == stat.S_IFLNK:
            # Made aside and renamed into place, like a regular file.
            tmp = f".{name}.pykata-link"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=parent)
            os.symlink(os.fsdecode(data), tmp, dir_fd=parent)
            os.chown(
                tmp,
                uid if uid >= 0 else -1,
                gid if gid >= 0 else -1,
                dir_fd=parent,
                follow_symlinks=False,
            )
            _replace(parent, tmp, name)
            return
        _write_chunk(parent, name, file_size, file_mode, uid, gid, offset, data)
    finally:
        for fd in reversed(fds):
            os.close(fd)


def _write_chunk(
    parent: int, name: str, size: int, mode: int, uid: int, gid: int, offset: int, data: bytes
) -> None:
    """Into ``<name>.tmp``; the existing ``name`` stays as it is until the last chunk is
    there and the temporary file is renamed over it."""
    tmp = name + ".tmp"
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    if offset == 0:
        flags |= os.O_TRUNC
    try:
        fd = os.open(tmp, flags, mode & FILE_MASK, dir_fd=parent)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidArgument(f"{FIELD}: {tmp} is a symlink") from exc
        if exc.errno == errno.EISDIR:
            raise InvalidArgument(f"{FIELD}: {tmp} is a directory") from exc
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidArgument(f"{FIELD}: {tmp} is not a regular file")
        if data:
            os.pwrite(fd, data, offset)
        if os.fstat(fd).st_size != size:
            return  # more chunks to come
        os.fchmod(fd, mode & FILE_MASK)
        _chown(fd, uid, gid)
    finally:
        os.close(fd)
    _replace(parent, tmp, name)
