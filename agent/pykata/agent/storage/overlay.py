"""``overlayfs``: an overlay mount whose layer directories all live under /run/kata-containers.

``io.katacontainers.fs-opt.overlay-rw`` adds a per-container upper and work directory
(``/run/kata-containers/<cid>/{upper,work}``); the driver option
``io.katacontainers.volume.overlayfs.create_directory=<dir>`` creates a directory first.
"""

from __future__ import annotations

import os

from pykata.agent.errors import InvalidArgument
from pykata.agent.mount import mount, parse_options
from pykata.agent.storage.manager import (
    Attached,
    StorageSpec,
    make_dirs,
    prepare_mount_point,
    undone_on_error,
)
from pykata.agent.validation import CONTAINER_BASE, validate_container_id, validate_under

RW_OPTION = "io.katacontainers.fs-opt.overlay-rw"
CREATE_DIR = "io.katacontainers.volume.overlayfs.create_directory="
LAYER_KEYS = ("lowerdir", "upperdir", "workdir")


def _check_layers(data: str) -> None:
    for item in data.split(","):
        key, _, value = item.partition("=")
        if key in LAYER_KEYS:
            for path in value.split(":"):
                validate_under(path, CONTAINER_BASE)


def attach(spec: StorageSpec, cid: str | None) -> Attached:
    options = [o for o in spec.options if o != RW_OPTION]
    if RW_OPTION in spec.options:
        if cid is None:
            raise InvalidArgument("a read-write overlay storage needs a container id")
        base = os.path.join(CONTAINER_BASE, validate_container_id(cid))
        for name in ("upper", "work"):
            make_dirs(os.path.join(base, name))
        options += [f"upperdir={base}/upper", f"workdir={base}/work"]
    for option in spec.driver_options:
        if option.startswith(CREATE_DIR):
            make_dirs(validate_under(option[len(CREATE_DIR) :], CONTAINER_BASE))
    flags, data = parse_options(options)
    if "lowerdir=" not in data:
        raise ValueError("overlay storage needs a lowerdir option")
    _check_layers(data)
    attached = Attached(spec.mount_point, created=prepare_mount_point(spec.mount_point))
    with undone_on_error(attached):
        mount(spec.source or "overlay", spec.mount_point, "overlay", flags, data)
        attached.mounted = True
    return attached
