"""``overlayfs``: an overlay mount whose layer directories all live under /run/kata-containers.

``io.katacontainers.fs-opt.overlay-rw`` adds a per-container upper and work directory
(``/run/kata-containers/<cid>/{upper,work}``); the driver option
``io.katacontainers.volume.overlayfs.create_directory=<dir>`` creates a directory first.

Every layer directory, the directory to create and the mount point are checked (below
/run/kata-containers, no symlink on the way) before anything is made; what was made is
removed again when a later step fails.

The kernel never gets a layer path as the host wrote it: each layer directory is opened
beneath /run/kata-containers (no symlink followed) and the overlay data names it by its
``/proc/self/fd/<fd>`` path, the fds held open across mount(2); a symlink swapped in after
the check cannot redirect a layer (the mount table shows those fd paths as the layers).
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


def _data_through_fds(data: str, root: str, fds: list[int]) -> str:
    """``data`` with every layer path replaced by the ``/proc/self/fd`` path of that
    directory opened beneath ``root`` (a symlink or non-directory on the way is refused);
    the fds opened are appended to ``fds`` for the caller to close after the mount."""
    items = []
    for item in data.split(","):
        key, sep, value = item.partition("=")
        if sep and key.rstrip("+") in LAYER_KEYS:
            paths = []
            for path in value.split(":"):
                fd = beneath.open_beneath(path, root, f"options {key}", os.O_PATH | os.O_DIRECTORY)
                fds.append(fd)
                paths.append(beneath.fd_path(fd))
            item = f"{key}={':'.join(paths)}"
        items.append(item)
    return ",".join(items)


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
    fds: list[int] = []
    try:
        with undone_on_error(attached):
            fd_data = _data_through_fds(data, root, fds)
            mount_at(spec.mount_point, spec.source or "overlay", "overlay", flags, fd_data)
            attached.mounted = True
    except BaseException:
        _remove_made(made)
        raise
    finally:
        for fd in fds:
            os.close(fd)
    return attached


def _remove_made(made: list[str]) -> None:
    for path in made:  # deepest first
        with contextlib.suppress(OSError):
            os.rmdir(path)
