"""Sandbox storages: validated, mounted by their driver, ref-counted by mount point.

Several containers may name the same storage (the shared virtio-fs, a pod volume): the first
``add`` mounts it, later ones only take a reference, and the last ``remove`` unmounts it and
removes the directory the agent created for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from pykata.agent import beneath, log
from pykata.agent.device.registry import Devices
from pykata.agent.errors import AgentError, FailedPrecondition, InvalidArgument
from pykata.agent.mount import mount, mount_points, umount_all
from pykata.agent.storage.options import apply_fs_group
from pykata.agent.validation import CONTAINER_BASE, validate_under

logger = log.get("storage")


@dataclass(frozen=True)
class FsGroup:
    """A pod's fsGroup: the storage's content is made group-owned (and group-writable)."""

    gid: int
    on_root_mismatch: bool = False  # Kata's OnRootMismatch: skip if the root already fits


@dataclass(frozen=True)
class StorageSpec:
    driver: str
    driver_options: list[str] = field(default_factory=list)
    source: str = ""
    fstype: str = ""
    options: list[str] = field(default_factory=list)
    mount_point: str = ""
    fs_group: FsGroup | None = None


@dataclass
class Attached:
    """What a driver did for one storage, so that it can be undone exactly."""

    mount_point: str
    mounted: bool = False  # the agent mounted something on mount_point
    created: list[str] = field(default_factory=list)  # directories made, deepest first
    remove_tree: bool = False  # the directory's content is the storage itself (local)
    stop: Callable[[], None] | None = None  # ends what keeps running for it (a watcher)
    watched: str = ""  # the source a watcher mirrors into mount_point (bind.keep_watching)


# Block drivers are coroutines: they wait for their disk to appear first.
Driver = Callable[[StorageSpec, "str | None"], "Attached | Awaitable[Attached]"]


@dataclass
class _Entry:
    attached: Attached
    driver: str
    refs: int = 1


def _normal(path: str) -> str:
    return os.path.normpath(path)


# The tree storages stay in: /run/kata-containers, or the manager's ``base`` (tests) while it
# runs a driver.
ROOT: contextvars.ContextVar[str] = contextvars.ContextVar("storage_root", default=CONTAINER_BASE)


def make_dirs(path: str, field: str = "mount_point") -> list[str]:
    """mkdir -p ``path`` below /run/kata-containers, no symlink followed, checks first;
    returns the directories created, deepest first (removed again on failure)."""
    return beneath.make_dirs(path, ROOT.get(), field)


def check_no_symlinks(path: str, field: str = "mount_point", *, missing_ok: bool = False) -> None:
    """Refuse a path that is not below /run/kata-containers or is reached through a symlink
    (the host can plant links via CopyFile); with ``missing_ok`` the part that exists."""
    beneath.check(path, ROOT.get(), field, missing_ok=missing_ok)


def prepare_mount_point(path: str) -> list[str]:
    return make_dirs(path)


def mount_at(mount_point: str, source: str, fstype: str | None, flags: int, data: str = "") -> None:
    """mount(2) on ``mount_point`` as opened beneath /run/kata-containers without symlinks:
    the kernel gets the fd's ``/proc/self/fd`` name, so a symlink swapped in after the checks
    cannot redirect the mount."""
    with beneath.opened(mount_point, ROOT.get(), "mount_point") as fd:
        mount(source, beneath.fd_path(fd), fstype, flags, data)


def _is_mount_below(path: str) -> bool:
    prefix = path.rstrip("/") + "/"
    return any(point.startswith(prefix) for point, _ in mount_points())


@contextlib.contextmanager
def undone_on_error(attached: Attached) -> Iterator[Attached]:
    """Undo the partial work recorded in ``attached`` if the block fails."""
    try:
        yield attached
    except BaseException:
        with contextlib.suppress(OSError):
            detach(attached)
        raise


def _remove_tree(path: str) -> None:
    """A local storage's directory and content (containers may have made it any depth)."""
    try:
        parent = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        beneath.remove_tree(
            parent,
            os.path.basename(path),
            field="mount_point",
            mounts=[point for point, _ in mount_points()],
        )
    except (OSError, FailedPrecondition) as exc:
        logger.warning(
            "storage directory not removed", extra={"mount_point": path, "error": str(exc)}
        )
    finally:
        os.close(parent)


def detach(attached: Attached) -> None:
    """Undo what a driver did: unmount, then remove what was created (never across mounts)."""
    path = attached.mount_point
    if attached.stop is not None:
        attached.stop()
    if attached.mounted:
        umount_all(path)
    if attached.remove_tree and os.path.isdir(path):
        if _is_mount_below(path):
            logger.warning(
                "storage directory still has mounts below it, kept", extra={"mount_point": path}
            )
            return
        _remove_tree(path)
    for path in attached.created:
        try:
            if os.path.isdir(path):
                os.rmdir(path)
            else:
                os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError:  # not empty: someone else uses it now
            break


class StorageManager:
    def __init__(self, base: str = CONTAINER_BASE, devices: Devices | None = None) -> None:
        """``base``: the tree every mount point must stay in; ``devices``: where block
        storages wait for their disk."""
        from pykata.agent.storage import drivers

        self._base = base
        self._drivers = drivers(devices if devices is not None else Devices())
        self._entries: dict[str, _Entry] = {}
        self._lock = asyncio.Lock()

    @property
    def driver_names(self) -> list[str]:
        return sorted(self._drivers)

    def driver_of(self, mount_point: str) -> str | None:
        entry = self._entries.get(_normal(mount_point))
        return entry.driver if entry else None

    def refs(self, mount_point: str) -> int:
        entry = self._entries.get(_normal(mount_point))
        return entry.refs if entry else 0

    def _validate(self, spec: StorageSpec) -> tuple[Driver, str]:
        driver = self._drivers.get(spec.driver)
        if driver is None:
            raise InvalidArgument(f"unsupported storage driver {spec.driver!r}")
        return driver, validate_under(spec.mount_point, self._base)

    async def add(self, specs: list[StorageSpec], *, cid: str | None = None) -> list[str]:
        """Attach every storage (or take a reference); all-or-nothing; the mount points."""
        async with self._lock:
            checked = [self._validate(spec) for spec in specs]
            done: list[str] = []
            try:
                for spec, (driver, mount_point) in zip(specs, checked, strict=True):
                    entry = self._entries.get(mount_point)
                    if entry is not None:
                        if entry.driver != spec.driver:
                            raise FailedPrecondition(
                                f"{mount_point} is already a {entry.driver!r} storage"
                            )
                        entry.refs += 1
                    else:
                        attached = await self._attach(driver, spec, mount_point, cid)
                        self._entries[mount_point] = _Entry(attached, spec.driver)
                        logger.info(
                            "storage added",
                            extra={"driver": spec.driver, "mount_point": mount_point},
                        )
                    done.append(mount_point)
            except BaseException:
                for mount_point in reversed(done):
                    self._release(mount_point)
                raise
            return done

    async def _attach(
        self, driver: Driver, spec: StorageSpec, mount_point: str, cid: str | None
    ) -> Attached:
        token = ROOT.set(self._base)
        try:
            result = driver(replace(spec, mount_point=mount_point), cid)
            attached = await result if inspect.isawaitable(result) else result
            if spec.fs_group is not None:
                with undone_on_error(attached):
                    apply_fs_group(
                        mount_point,
                        spec.fs_group.gid,
                        read_only="ro" in spec.options,
                        on_root_mismatch=spec.fs_group.on_root_mismatch,
                    )
            return attached
        except AgentError:
            raise
        except OSError as exc:
            raise FailedPrecondition(f"{spec.driver} storage at {mount_point}: {exc}") from exc
        except ValueError as exc:
            raise InvalidArgument(f"{spec.driver} storage at {mount_point}: {exc}") from exc
        finally:
            ROOT.reset(token)

    def _release(self, mount_point: str) -> None:
        entry = self._entries.get(mount_point)
        if entry is None:
            return
        entry.refs -= 1
        if entry.refs > 0:
            return
        del self._entries[mount_point]
        try:
            detach(entry.attached)
        except OSError as exc:
            logger.error(
                "cannot clean storage up", extra={"mount_point": mount_point, "error": str(exc)}
            )
            raise FailedPrecondition(f"cannot clean storage {mount_point} up: {exc}") from exc
        logger.info("storage removed", extra={"mount_point": mount_point})

    async def remove(self, mount_points: list[str]) -> None:
        """Drop one reference to each; unknown mount points are ignored (already gone)."""
        async with self._lock:
            errors: list[str] = []
            for mount_point in mount_points:
                try:
                    self._release(_normal(mount_point))
                except AgentError as exc:
                    errors.append(exc.message)
            if errors:
                raise FailedPrecondition("; ".join(errors))

    def snapshot(self) -> list[dict[str, Any]]:
        """Every storage with its reference count and what undoing it takes (in order)."""
        return [
            {
                "mount_point": point,
                "driver": entry.driver,
                "refs": entry.refs,
                "mounted": entry.attached.mounted,
                "created": entry.attached.created,
                "remove_tree": entry.attached.remove_tree,
                "watched": entry.attached.watched,
            }
            for point, entry in self._entries.items()
        ]

    def restore(self, entries: list[dict[str, Any]]) -> None:
        from pykata.agent.storage import bind

        for item in entries:
            attached = Attached(
                item["mount_point"],
                mounted=bool(item["mounted"]),
                created=list(item["created"]),
                remove_tree=bool(item["remove_tree"]),
            )
            if item["watched"]:
                bind.keep_watching(item["watched"], attached, {})
            self._entries[item["mount_point"]] = _Entry(attached, item["driver"], int(item["refs"]))

    async def remove_all(self) -> None:
        async with self._lock:
            errors: list[str] = []
            # Newest first: a later storage may sit on top of an earlier one.
            for mount_point in reversed(list(self._entries)):
                self._entries[mount_point].refs = 1
                try:
                    self._release(mount_point)
                except AgentError as exc:
                    errors.append(exc.message)
            if errors:
                raise FailedPrecondition("; ".join(errors))
