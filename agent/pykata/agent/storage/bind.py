"""``watchable-bind``: a host-shared path (a ConfigMap, a Secret) shown at a guest path.

As Kata: a small directory (at most 16 entries and 1 MiB) is copied onto its own tmpfs and
polled every 2 s; changes are copied over (files replaced by rename), so inotify watchers in
the container see them, which they would not through virtio-fs. Anything larger, or a
single file, is bind-mounted instead (same content, no inotify events for host changes). A
watched tree that outgrows the limits keeps its last copy and is no longer updated.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat

from pykata.agent import log
from pykata.agent.mount import MS_BIND, MS_RDONLY, MS_REC, MS_REMOUNT, mount, parse_options
from pykata.agent.storage.manager import (
    Attached,
    StorageSpec,
    check_no_symlinks,
    prepare_mount_point,
    undone_on_error,
)
from pykata.agent.validation import CONTAINER_BASE, validate_under

logger = log.get("storage")

MAX_ENTRIES = 16
MAX_BYTES = 1024 * 1024
WATCH_INTERVAL = 2.0

# relative path -> (file type, mtime ns, size, link target)
Snapshot = dict[str, tuple[int, int, int, str]]


def scan(root: str) -> Snapshot:
    """Every entry below ``root``, without following symlinks."""
    entries: Snapshot = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
            kind = stat.S_IFMT(st.st_mode)
            entries[os.path.relpath(path, root)] = (kind, st.st_mtime_ns, st.st_size, target)
    return entries


def small(snapshot: Snapshot) -> bool:
    total = sum(size for kind, _, size, _ in snapshot.values() if kind == stat.S_IFREG)
    return len(snapshot) <= MAX_ENTRIES and total <= MAX_BYTES


def sync(source: str, target: str, old: Snapshot, new: Snapshot) -> None:
    """Make ``target`` (a copy of ``source`` as of ``old``) a copy of it as of ``new``."""
    for rel in sorted(set(old) - set(new), reverse=True):
        path = os.path.join(target, rel)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    for rel in sorted(new):
        if old.get(rel) == new[rel]:
            continue
        kind, _, _, link = new[rel]
        src, dst = os.path.join(source, rel), os.path.join(target, rel)
        if kind == stat.S_IFDIR:
            os.makedirs(dst, exist_ok=True)
            shutil.copystat(src, dst)
            continue
        # Replace by rename: a reader never sees half a file, a watcher sees one event.
        tmp = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.pykata-tmp")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if kind == stat.S_IFLNK:
            os.symlink(link, tmp)
        elif kind == stat.S_IFREG:
            shutil.copy2(src, tmp)
        else:
            continue  # devices, fifos, sockets have no place in a config volume
        os.replace(tmp, dst)


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
    mount("tmpfs", target, "tmpfs", 0, f"size={2 * MAX_BYTES},mode=0755")
    attached.mounted = True
    sync(source, target, {}, snapshot)
    task = asyncio.get_running_loop().create_task(watch(source, target, snapshot))

    def stop() -> None:
        task.cancel()

    attached.stop = stop


def attach(spec: StorageSpec, cid: str | None) -> Attached:
    source = validate_under(spec.source, CONTAINER_BASE)
    if not os.path.exists(source):
        raise ValueError(f"bind source {source} does not exist")
    check_no_symlinks(source)
    flags, _ = parse_options(spec.options)
    if os.path.isdir(source):
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
        if not os.path.exists(spec.mount_point):
            with open(spec.mount_point, "x"):
                pass
            created.insert(0, spec.mount_point)
        check_no_symlinks(spec.mount_point)
    attached = Attached(spec.mount_point, created=created)
    with undone_on_error(attached):
        mount(source, spec.mount_point, None, MS_BIND | MS_REC)
        attached.mounted = True
        if flags & MS_RDONLY:
            mount("none", spec.mount_point, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    return attached
