"""``watchable-bind``: a host-shared path made visible at another guest path.

Kata copies such volumes onto a tmpfs and re-copies on change so that inotify watchers in
the container see updates; here the source is bind-mounted (same content, updates visible
at once, but no inotify events for changes made by the host).
"""

from __future__ import annotations

import os

from pykata.agent.mount import MS_BIND, MS_RDONLY, MS_REC, MS_REMOUNT, mount, parse_options
from pykata.agent.storage.manager import (
    Attached,
    StorageSpec,
    check_no_symlinks,
    prepare_mount_point,
    undone_on_error,
)
from pykata.agent.validation import CONTAINER_BASE, validate_under


def attach(spec: StorageSpec, cid: str | None) -> Attached:
    source = validate_under(spec.source, CONTAINER_BASE)
    if not os.path.exists(source):
        raise ValueError(f"bind source {source} does not exist")
    check_no_symlinks(source)
    flags, _ = parse_options(spec.options)
    if os.path.isdir(source):
        created = prepare_mount_point(spec.mount_point)
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
