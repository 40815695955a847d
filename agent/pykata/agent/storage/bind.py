"""``watchable-bind``: a host-shared path (a ConfigMap, a Secret) shown at a guest path.

As Kata: a small directory (at most 16 entries and 1 MiB) is copied onto its own tmpfs and
polled every 2 s; changes are copied over (files replaced by rename), so inotify watchers in
the container see them, which they would not through virtio-fs. Anything larger, or a
single file, is bind-mounted instead (same content, no inotify events for host changes). A
watched tree that outgrows the limits keeps its last copy and is no longer updated.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import stat
from collections.abc import Callable

from pykata.agent import beneath, log
from pykata.agent.mount import MS_BIND, MS_RDONLY, MS_REC, MS_REMOUNT, parse_options
from pykata.agent.storage.manager import (
    ROOT,
    Attached,
    StorageSpec,
    check_no_symlinks,
    mount_at,
    prepare_mount_point,
    undone_on_error,
)
from pykata.agent.validation import CONTAINER_BASE

logger = log.get("storage")

MAX_ENTRIES = 16
MAX_BYTES = 1024 * 1024
WATCH_INTERVAL = 2.0

# relative path -> (file type, mtime ns, size, link target)
Snapshot = dict[str, tuple[int, int, int, str]]


def scan(root: str, limit: int = MAX_ENTRIES + 1) -> Snapshot:
    """Entries below ``root`` (at most ``limit``: more means too big to copy anyway), without
    following symlinks, iteratively."""
    entries: Snapshot = {}
    pending = [""]
    while pending and len(entries) < limit:
        rel_dir = pending.pop()
        with os.scandir(os.path.join(root, rel_dir) if rel_dir else root) as items:
            for item in items:
                rel = os.path.join(rel_dir, item.name) if rel_dir else item.name
                st = item.stat(follow_symlinks=False)
                kind = stat.S_IFMT(st.st_mode)
                target = os.readlink(item.path) if kind == stat.S_IFLNK else ""
                entries[rel] = (kind, st.st_mtime_ns, st.st_size, target)
                if kind == stat.S_IFDIR:
                    pending.append(rel)
                if len(entries) >= limit:
                    break
    return entries


def small(snapshot: Snapshot) -> bool:
    total = sum(size for kind, _, size, _ in snapshot.values() if kind == stat.S_IFREG)
    return len(snapshot) <= MAX_ENTRIES and total <= MAX_BYTES


DIR_READ = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _lstat(parent: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _clear(parent: int, name: str) -> None:
    """Remove whatever ``name`` is below ``parent``, a directory tree included (no mounts
    lie in the copy: it is the storage's own tmpfs)."""
    st = _lstat(parent, name)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        beneath.remove_tree(parent, name, field="watchable-bind copy", mounts=[])
    else:
        os.unlink(name, dir_fd=parent)


def sync(source: str, target: str, old: Snapshot, new: Snapshot) -> None:
    """Make ``target`` (a copy of ``source`` as of ``old``) a copy of it as of ``new``.

    Both trees are walked through fds without following symlinks: an entry that became a
    symlink on either side is never written through, and one whose kind changed (a symlink
    turned directory, say) is replaced, not followed."""
    src_root = beneath.open_root(source)
    dst_root = beneath.open_root(target)
    try:
        for rel in sorted(set(old) - set(new), reverse=True):
            _in_parent(dst_root, rel, _clear)
        for rel in sorted(new):
            if old.get(rel) == new[rel]:
                continue
            _in_parent(dst_root, rel, functools.partial(_copy, src_root, rel, entry=new[rel]))
    finally:
        os.close(src_root)
        os.close(dst_root)


def _in_parent(root: int, rel: str, action: Callable[[int, str], None]) -> None:
    parts = rel.split("/")
    try:
        parent = beneath.open_at(root, parts[:-1], os.O_PATH | os.O_DIRECTORY)
    except OSError as exc:
        # The parent changed kind meanwhile (or is gone): the next round sees it again.
        logger.debug("watched entry skipped", extra={"entry": rel, "error": str(exc)})
        return
    try:
        action(parent, parts[-1])
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT, errno.EXDEV):
            raise
        # The source entry changed kind since the scan (a file became a symlink, say): it is
        # not followed; the next round copies what it is now.
        logger.debug("watched entry skipped", extra={"entry": rel, "error": str(exc)})
    finally:
        os.close(parent)


def _copy(
    src_root: int, rel: str, parent: int, name: str, entry: tuple[int, int, int, str]
) -> None:
    kind, _, _, link = entry
    existing = _lstat(parent, name)
    if kind == stat.S_IFDIR:
        if existing is not None and not stat.S_ISDIR(existing.st_mode):
            os.unlink(name, dir_fd=parent)
            existing = None
        if existing is None:
            os.mkdir(name, 0o700, dir_fd=parent)
        src = beneath.open_at(src_root, rel.split("/"), DIR_READ)
        try:
            dst = os.open(name, DIR_READ, dir_fd=parent)
            try:
                _copy_meta(src, dst)
            finally:
                os.close(dst)
        finally:
            os.close(src)
        return
    if kind not in (stat.S_IFLNK, stat.S_IFREG):
        return  # devices, fifos, sockets have no place in a config volume
    # Replace by rename: a reader never sees half a file, a watcher sees one event.
    tmp = f".{name}.pykata-tmp"
    _clear(parent, tmp)
    if kind == stat.S_IFLNK:
        os.symlink(link, tmp, dir_fd=parent)
    else:
        src = beneath.open_at(src_root, rel.split("/"), os.O_RDONLY)
        try:
            if not stat.S_ISREG(os.fstat(src).st_mode):
                return
            dst = os.open(
                tmp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=parent,
            )
            try:
                while chunk := os.read(src, 65536):
                    os.write(dst, chunk)
                _copy_meta(src, dst)
            finally:
                os.close(dst)
        finally:
            os.close(src)
    if existing is not None and stat.S_ISDIR(existing.st_mode):
        _clear(parent, name)
    os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)


def _copy_meta(src: int, dst: int) -> None:
    st = os.fstat(src)
    os.fchmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


async def watch(source: str, target: str, copied: Snapshot) -> None:
    while True:
        await asyncio.sleep(WATCH_INTERVAL)
        try:
            current = scan(source)
            if current == copied:
                continue
            if not small(current):
                logger.warning(
                    "watched storage outgrew the copy limits: no longer updated",
                    extra={"source": source, "mount_point": target},
                )
                return
            sync(source, target, copied, current)
            copied = current
        except OSError as exc:
            # The host may be changing it right now: try again next round.
            logger.debug("watched storage not synced", extra={"source": source, "error": str(exc)})


def _copy_and_watch(source: str, attached: Attached, snapshot: Snapshot) -> None:
    target = attached.mount_point
    mount_at(target, "tmpfs", "tmpfs", 0, f"size={2 * MAX_BYTES},mode=0755")
    attached.mounted = True
    sync(source, target, {}, snapshot)
    keep_watching(source, attached, snapshot)


def keep_watching(source: str, attached: Attached, snapshot: Snapshot) -> None:
    """Mirror ``source`` into the mount point from now on (also after an upgrade, with an
    empty snapshot: the first round then copies everything again)."""
    task = asyncio.get_running_loop().create_task(watch(source, attached.mount_point, snapshot))

    def stop() -> None:
        task.cancel()

    attached.stop = stop
    attached.watched = source


def attach(spec: StorageSpec, cid: str | None) -> Attached:
    # Every check first: the source, the options, the part of the mount point that exists.
    source = beneath.check(spec.source, CONTAINER_BASE, "source")
    flags, _ = parse_options(spec.options)
    check_no_symlinks(spec.mount_point, missing_ok=True)
    with beneath.opened(source, CONTAINER_BASE, "source") as source_fd:
        is_dir = stat.S_ISDIR(os.fstat(source_fd).st_mode)
        if is_dir:
            created = prepare_mount_point(spec.mount_point)
            snapshot = scan(source)
            if small(snapshot):
                attached = Attached(spec.mount_point, created=created)
                # The copy stays writable for the watcher; containers mount it read-only.
                with undone_on_error(attached):
                    _copy_and_watch(source, attached, snapshot)
                return attached
        else:
            created = prepare_mount_point(os.path.dirname(spec.mount_point))
            attached = Attached(spec.mount_point, created=created)
            with undone_on_error(attached):
                _make_file(spec.mount_point, attached)
        attached = Attached(spec.mount_point, created=created)
        with undone_on_error(attached):
            # The source as opened and checked: a symlink swapped in since cannot redirect it.
            mount_at(spec.mount_point, beneath.fd_path(source_fd), None, MS_BIND | MS_REC)
            attached.mounted = True
            if flags & MS_RDONLY:
                mount_at(spec.mount_point, "none", None, MS_BIND | MS_REMOUNT | MS_RDONLY)
        return attached


def _make_file(path: str, attached: Attached) -> None:
    """The file a single-file bind goes on, made below its checked parent if missing."""
    with beneath.opened(os.path.dirname(path), ROOT.get(), "mount_point", DIR_READ) as parent:
        name = os.path.basename(path)
        try:
            os.close(
                os.open(
                    name,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o644,
                    dir_fd=parent,
                )
            )
            attached.created.insert(0, path)
        except FileExistsError:
            pass
    check_no_symlinks(path)
