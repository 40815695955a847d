"""``overlayfs``: an overlay mount whose layer directories all live under /run/kata-containers.

``io.katacontainers.fs-opt.overlay-rw`` adds a per-container upper and work directory
(``/run/kata-containers/<cid>/{upper,work}``); the driver option
``io.katacontainers.volume.overlayfs.create_directory=<dir>`` creates a directory first.

Every layer directory, the directory to create and the mount point are checked (below
/run/kata-containers, no symlink on the way) before anything is made; what was made is
removed again when a later step fails.
"""

from __future__ import annotations

import contextlib
import os
import stat

from pykata.agent import beneath
from pykata.agent.errors import InvalidArgument
from pykata.agent.storage.manager import (
    ROOT,
    Attached,
    StorageSpec,
    make_dirs,
    mount_at,
    prepare_mount_point,
    undone_on_error,
)
from pykata.agent.storage.options import fs_mount_options
from pykata.agent.validation import validate_container_id

RW_OPTION = "io.katacontainers.fs-opt.overlay-rw"
CREATE_DIR = "io.katacontainers.volume.overlayfs.create_directory="
LAYER_KEYS = ("lowerdir", "upperdir", "workdir", "datadir")


def _layers(data: str) -> list[tuple[str, str]]:
    """(option, path) of every layer directory the overlay data names."""
    layers = []
    for item in data.split(","):
        key, _, value = item.partition("=")
        if key.rstrip("+") in LAYER_KEYS:
            if "\\" in value:
                raise ValueError(f"options: escaped characters in {key} are not accepted")
            layers += [(f"options {key}", path) for path in value.split(":")]
    return layers


def attach(spec: StorageSpec, cid: str | None) -> Attached:
    root = ROOT.get()  # /run/kata-containers
    options = [o for o in spec.options if o != RW_OPTION]
    to_make: list[tuple[str, str]] = []  # (path, field): made once everything is checked
    if RW_OPTION in spec.options:
        if cid is None:
            raise InvalidArgument("a read-write overlay storage needs a container id")
        base = os.path.join(root, validate_container_id(cid))
        for name in ("upper", "work"):
            to_make.append((os.path.join(base, name), f"options {RW_OPTION}"))
        options += [f"upperdir={base}/upper", f"workdir={base}/work"]
    for option in spec.driver_options:
        if option.startswith(CREATE_DIR):
            to_make.append((option[len(CREATE_DIR) :], "driver_options create_directory"))
    flags, data = fs_mount_options(options)
    if "lowerdir=" not in data:
        raise ValueError("overlay storage needs a lowerdir option")
    # Checks, all of them before the first directory is made.
    for path, field in to_make:
        beneath.check(path, root, field, missing_ok=True)
    pending = {os.path.normpath(p) for p, _ in to_make}
    for field, path in _layers(data):
        normal = beneath.check(path, root, field, missing_ok=True)
        if normal not in pending:
            beneath.check(path, root, field, kind=stat.S_IFDIR)
    beneath.check(spec.mount_point, root, "mount_point", missing_ok=True)
    made: list[str] = []
    try:
        for path, field in to_make:
            made = make_dirs(path, field) + made
        attached = Attached(spec.mount_point, created=prepare_mount_point(spec.mount_point))
    except BaseException:
        _remove_made(made)
        raise
    try:
        with undone_on_error(attached):
            mount_at(spec.mount_point, spec.source or "overlay", "overlay", flags, data)
            attached.mounted = True
    except BaseException:
        _remove_made(made)
        raise
    return attached


def _remove_made(made: list[str]) -> None:
    for path in made:  # deepest first
        with contextlib.suppress(OSError):
            os.rmdir(path)
