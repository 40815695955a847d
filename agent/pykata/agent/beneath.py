"""Host-given paths, opened beneath their allowed root without following any symlink.

The host names guest paths in CopyFile, storages, GetVolumeStats and OCI specs. Every such
path goes through here:

- ``lexical``: absolute, no NUL, components of at most 255 bytes, at most PATH_MAX in all,
  strictly below its root once normalised (``..`` cannot climb out);
- ``open_beneath``: the path opened relative to an fd of its root with ``openat2`` and
  ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`` (``RESOLVE_NO_XDEV`` on request), or, on kernels
  without openat2, one component at a time with ``O_NOFOLLOW``; a symlink anywhere, the last
  component included, is refused;
- ``make_dirs``: ``mkdir -p`` that walks the existing part first (every check before the
  first directory is made), creates the rest one component at a time below the fds it
  opened, and removes what it made if anything fails;
- ``remove_tree``: deletes a directory tree through fds, iteratively (no recursion limit),
  after a first pass has checked that no mount lies anywhere below it.

Refusals are InvalidArgument (or NotFound for a missing path) naming the request field.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
from collections.abc import Iterator

from pykata.agent.errors import FailedPrecondition, InvalidArgument, NotFound
from pykata.agent.libc import libc

NAME_MAX = 255
PATH_MAX = 4096

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
SYS_OPENAT2 = 437  # the same number on every architecture (asm-generic, Linux 5.6)

O_PATH_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


_syscall = libc.syscall
_syscall.restype = ctypes.c_long
_openat2_missing = False


def _openat2(dir_fd: int, rel: str, flags: int, mode: int, resolve: int) -> int | None:
    """The fd, or None when the kernel has no openat2; OSError on any other failure."""
    global _openat2_missing
    if _openat2_missing:
        return None
    how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0, resolve)
    fd = _syscall(
        ctypes.c_long(SYS_OPENAT2),
        ctypes.c_int(dir_fd),
        ctypes.c_char_p(os.fsencode(rel)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd >= 0:
        return int(fd)
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EPERM) and not _probe_openat2():
        _openat2_missing = True
        return None
    raise OSError(err, os.strerror(err), rel)


def _probe_openat2() -> bool:
    """openat2 works here (a seccomp filter or an old kernel may deny it: ENOSYS/EPERM)."""
    how = _OpenHow(os.O_PATH | os.O_CLOEXEC, 0, 0)
    fd = _syscall(
        ctypes.c_long(SYS_OPENAT2),
        ctypes.c_int(-100),  # AT_FDCWD
        ctypes.c_char_p(b"/"),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd >= 0:
        os.close(int(fd))
        return True
    return False


def use_openat2(enabled: bool) -> None:
    """Force the O_NOFOLLOW walk (``enabled=False``), as on kernels before 5.6 (tests)."""
    global _openat2_missing
    _openat2_missing = not enabled


def lexical(path: str, root: str, field: str, *, allow_root: bool = False) -> list[str]:
    """The components of ``path`` below ``root``; InvalidArgument naming ``field`` if the
    path is relative, has a NUL, a too long name, or is not below ``root``."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidArgument(f"{field}: path {path!r} must be absolute")
    if "\0" in path:
        raise InvalidArgument(f"{field}: path contains a NUL byte: {path!r}")
    if len(os.fsencode(path)) >= PATH_MAX:
        raise InvalidArgument(f"{field}: path longer than {PATH_MAX - 1} bytes")
    normal = os.path.normpath(path)
    root = os.path.normpath(root)
    if normal == root and allow_root:
        return []
    prefix = root.rstrip("/") + "/"
    if not normal.startswith(prefix):
        raise InvalidArgument(f"{field}: path {path!r} is not under {root}")
    parts = normal[len(prefix) :].split("/")
    for part in parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise InvalidArgument(f"{field}: a name in {path!r} is longer than {NAME_MAX} bytes")
    return parts


def _refusal(exc: OSError, field: str, path: str) -> Exception:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV):
        return InvalidArgument(
            f"{field}: {path!r} goes through a symlink, a non-directory or another mount "
            "(host-given paths are resolved without following symlinks)"
        )
    if exc.errno == errno.ENAMETOOLONG:
        return InvalidArgument(f"{field}: path {path!r} is too long")
    if exc.errno == errno.ENOENT:
        return NotFound(f"{field}: {path!r} does not exist")
    return exc


def open_root(root: str, *, create: bool = False) -> int:
    """An O_PATH fd of the agent's own ``root`` (a fixed path), every component from ``/``
    checked not to be a symlink; missing ones are made when ``create``."""
    fd = os.open("/", O_PATH_DIR)
    try:
        for name in [p for p in os.path.normpath(root).split("/") if p]:
            try:
                nxt = os.open(name, O_PATH_DIR, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=fd)
                nxt = os.open(name, O_PATH_DIR, dir_fd=fd)
            except OSError as exc:
                raise _refusal(exc, "root", root) from exc
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_at(dir_fd: int, parts: list[str], flags: int = os.O_PATH, *, no_xdev: bool = False) -> int:
    """``parts`` opened below ``dir_fd`` with no symlink followed (the last one included):
    OSError ELOOP/ENOTDIR/EXDEV when one is met."""
    if not parts:
        return os.dup(dir_fd)
    rel = "/".join(parts)
    resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
    if no_xdev:
        resolve |= RESOLVE_NO_XDEV
    fd = _openat2(dir_fd, rel, flags & ~os.O_NOFOLLOW, 0, resolve)
    if fd is None:
        fd = _walk(dir_fd, parts, flags, no_xdev)
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            raise OSError(errno.ELOOP, "symlink", rel)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _walk(dir_fd: int, parts: list[str], flags: int, no_xdev: bool) -> int:
    """The fallback: one component at a time with O_NOFOLLOW (``..`` never reaches here)."""
    dev = os.fstat(dir_fd).st_dev if no_xdev else None
    fd = os.dup(dir_fd)
    try:
        for name in parts[:-1]:
            if name in ("", ".", ".."):
                raise OSError(errno.EXDEV, "not beneath", name)
            nxt = os.open(name, O_PATH_DIR, dir_fd=fd)
            os.close(fd)
            fd = nxt
            if dev is not None and os.fstat(fd).st_dev != dev:
                raise OSError(errno.EXDEV, "crosses a mount", name)
        last = os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        if dev is not None and os.fstat(last).st_dev != dev:
            os.close(last)
            raise OSError(errno.EXDEV, "crosses a mount", parts[-1])
        return last
    finally:
        os.close(fd)


def open_beneath(
    path: str,
    root: str,
    field: str,
    flags: int = os.O_PATH,
    *,
    allow_root: bool = False,
    no_xdev: bool = False,
) -> int:
    """``path`` (absolute, below ``root``) opened without following symlinks."""
    parts = lexical(path, root, field, allow_root=allow_root)
    root_fd = _open_root_for(root, field)
    try:
        return open_at(root_fd, parts, flags, no_xdev=no_xdev)
    except OSError as exc:
        raise _refusal(exc, field, path) from exc
    finally:
        os.close(root_fd)


def _open_root_for(root: str, field: str) -> int:
    try:
        return open_root(root)
    except FileNotFoundError:
        raise NotFound(f"{field}: {root} does not exist") from None


@contextlib.contextmanager
def opened(
    path: str, root: str, field: str, flags: int = os.O_PATH, **kwargs: bool
) -> Iterator[int]:
    fd = open_beneath(path, root, field, flags, **kwargs)
    try:
        yield fd
    finally:
        os.close(fd)


def fd_path(fd: int) -> str:
    """A path naming exactly what ``fd`` is (for mount(2), which takes paths)."""
    return f"/proc/self/fd/{fd}"


def check(
    path: str,
    root: str,
    field: str,
    *,
    kind: int | None = None,
    missing_ok: bool = False,
    allow_root: bool = False,
) -> str:
    """The normalised ``path`` once it is known to lie below ``root`` with no symlink on the
    way (the part of it that exists, with ``missing_ok``) and, with ``kind``, to be of that
    file type (``stat.S_IFDIR``, ...)."""
    parts = lexical(path, root, field, allow_root=allow_root)
    normal = os.path.normpath(path)
    try:
        root_fd = open_root(root)
    except FileNotFoundError:
        if missing_ok:
            return normal
        raise NotFound(f"{field}: {root} does not exist") from None
    try:
        fd = open_at(root_fd, parts)
    except OSError as exc:
        if exc.errno == errno.ENOENT and missing_ok:
            _check_existing_prefix(root_fd, parts, field, path)
            return normal
        raise _refusal(exc, field, path) from exc
    finally:
        os.close(root_fd)
    try:
        if kind is not None and stat.S_IFMT(os.fstat(fd).st_mode) != kind:
            raise InvalidArgument(f"{field}: {path!r} is not a {_kind_name(kind)}")
    finally:
        os.close(fd)
    return normal


def _check_existing_prefix(root_fd: int, parts: list[str], field: str, path: str) -> None:
    fd = os.dup(root_fd)
    try:
        for name in parts:
            try:
                nxt = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                return
            except OSError as exc:
                raise _refusal(exc, field, path) from exc
            os.close(fd)
            fd = nxt
            mode = os.fstat(fd).st_mode
            if stat.S_ISLNK(mode) or (name is not parts[-1] and not stat.S_ISDIR(mode)):
                raise _refusal(OSError(errno.ELOOP, "symlink"), field, path)
    finally:
        os.close(fd)


def _kind_name(kind: int) -> str:
    return {stat.S_IFDIR: "directory", stat.S_IFREG: "regular file"}.get(kind, f"{kind:#o}")


def make_dirs(path: str, root: str, field: str, mode: int = 0o755) -> list[str]:
    """``mkdir -p path`` below ``root``; the directories made, deepest first.

    The existing part is walked (and refused on a symlink or non-directory) before anything
    is made; each new directory is made below the fd of its parent, so a symlink planted
    meanwhile cannot redirect it; on failure, what was made is removed again."""
    parts = lexical(path, root, field)
    root_fd = open_root(root, create=True)
    try:
        return make_dirs_at(root_fd, parts, field, path, os.path.normpath(root), mode)
    finally:
        os.close(root_fd)


def make_dirs_at(
    root_fd: int, parts: list[str], field: str, path: str, base: str, mode: int = 0o755
) -> list[str]:
    """make_dirs below an fd of the root (``base``: that root's path, for the list made)."""
    fds = [os.dup(root_fd)]
    made: list[tuple[int, str, str]] = []  # (index of parent fd, name, absolute path)
    current = base
    try:
        for name in parts:
            current = os.path.join(current, name)
            try:
                fd = os.open(name, O_PATH_DIR, dir_fd=fds[-1])
            except FileNotFoundError:
                os.mkdir(name, mode, dir_fd=fds[-1])
                made.append((len(fds) - 1, name, current))
                fd = os.open(name, O_PATH_DIR, dir_fd=fds[-1])
            fds.append(fd)
    except OSError as exc:
        for index, name, _ in reversed(made):
            with contextlib.suppress(OSError):
                os.rmdir(name, dir_fd=fds[index])
        raise _refusal(exc, field, path) from exc
    except BaseException:
        for index, name, _ in reversed(made):
            with contextlib.suppress(OSError):
                os.rmdir(name, dir_fd=fds[index])
        raise
    finally:
        for fd in fds:
            os.close(fd)
    return [p for _, _, p in reversed(made)]


def remove_tree(parent_fd: int, name: str, *, field: str, mounts: list[str]) -> None:
    """Delete the directory ``name`` below ``parent_fd`` and all it holds, without recursion.

    A first pass visits the whole tree and refuses (FailedPrecondition, nothing deleted) when
    any directory in it is on another device or is a mount point in ``mounts`` (absolute
    paths, compared with what ``/proc/self/fd`` names each directory); only then is anything
    deleted."""
    top = os.open(name, DIR_READ, dir_fd=parent_fd)
    try:
        dev = os.fstat(top).st_dev
        mount_set = set(mounts)
        stack = [os.dup(top)]
        try:
            while stack:
                fd = stack.pop()
                try:
                    if os.fstat(fd).st_dev != dev or os.readlink(fd_path(fd)) in mount_set:
                        raise FailedPrecondition(
                            f"{field}: a mount lies below the directory {name!r}"
                        )
                    with os.scandir(fd) as entries:
                        for entry in entries:
                            if entry.is_dir(follow_symlinks=False):
                                stack.append(os.open(entry.name, DIR_READ, dir_fd=fd))
                finally:
                    os.close(fd)
        finally:
            for fd in stack:
                os.close(fd)
        _delete_content(top)
    finally:
        os.close(top)
    os.rmdir(name, dir_fd=parent_fd)


DIR_READ = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _delete_content(top: int) -> None:
    """Empty the directory ``top``: depth first with an explicit stack of (fd, name)."""
    stack: list[tuple[int, str]] = [(os.dup(top), "")]
    try:
        while stack:
            fd = stack[-1][0]
            child = None
            with os.scandir(fd) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        child = entry.name
                        break
                    os.unlink(entry.name, dir_fd=fd)
            if child is not None:
                stack.append((os.open(child, DIR_READ, dir_fd=fd), child))
                continue
            done_fd, done_name = stack.pop()
            os.close(done_fd)
            if stack:
                os.rmdir(done_name, dir_fd=stack[-1][0])
    finally:
        for fd, _ in stack:
            os.close(fd)


# Where the OCI bind mounts Kata runtimes send take their source: the shared dir, the sandbox
# dir and storages (all below /run/kata-containers), and the guest's /dev/shm.
BIND_ROOTS = ("/run/kata-containers", "/dev/shm")


def is_bind(mount: dict[str, object]) -> bool:
    options = mount.get("options") or []
    return mount.get("type") == "bind" or (
        isinstance(options, list) and any(o in ("bind", "rbind") for o in options)
    )


def bind_root(source: str) -> str | None:
    """The one of BIND_ROOTS that ``source`` (absolute) is, or lies below."""
    normal = os.path.normpath(source)
    return next((r for r in BIND_ROOTS if normal == r or normal.startswith(r + "/")), None)


def check_bind_source(source: str, field: str) -> str:
    """The normalised ``source`` of an OCI bind mount when it lies below one of
    ``BIND_ROOTS`` (or is /dev/shm) and no symlink is on the part of it that exists (a
    storage may still be made there); InvalidArgument naming ``field`` otherwise."""
    if not isinstance(source, str) or not source.startswith("/"):
        raise InvalidArgument(f"{field}: bind source {source!r} must be an absolute path")
    root = bind_root(source)
    if root is not None:
        return check(source, root, field, missing_ok=True, allow_root=root != BIND_ROOTS[0])
    raise InvalidArgument(
        f"{field}: bind source {source!r} is outside what a container may see of the guest "
        f"({', '.join(BIND_ROOTS)})"
    )
