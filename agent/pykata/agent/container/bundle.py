"""The OCI bundle of a container: /run/kata-containers/<cid>/{config.json,rootfs}."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from pykata.agent.errors import InvalidArgument
from pykata.agent.mount import MS_BIND, MS_REC, mount, umount_all
from pykata.agent.validation import CONTAINER_BASE, safe_join, validate_under


class Bundle:
    def __init__(self, container_id: str, base: str = CONTAINER_BASE) -> None:
        self.path = safe_join(base, container_id)
        self.rootfs = os.path.join(self.path, "rootfs")
        self.config = os.path.join(self.path, "config.json")

    def create(self, root_source: str) -> None:
        """Make the bundle dir and bind the host-given root (a storage or shared-dir path)."""
        source = validate_under(root_source, CONTAINER_BASE)
        # A symlink on the way could point the root anywhere outside Kata's tree.
        if os.path.realpath(source) != source:
            raise InvalidArgument(f"container root {root_source!r} goes through a symlink")
        if not os.path.isdir(source):
            raise InvalidArgument(f"container root {root_source!r} is not a directory")
        os.makedirs(self.rootfs, exist_ok=True)
        if os.path.normpath(source) != self.rootfs:
            mount(source, self.rootfs, None, MS_BIND | MS_REC)

    def write_config(self, spec: dict[str, Any]) -> None:
        tmp = self.config + ".tmp"
        with open(tmp, "w") as f:
            json.dump(spec, f)
        os.replace(tmp, self.config)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def remove(self) -> None:
        """Unmount the rootfs and delete the bundle; never recurses into a root's contents."""
        if not os.path.isdir(self.path):
            return
        if os.path.isdir(self.rootfs):
            umount_all(self.rootfs)
        for entry in os.scandir(self.path):
            if not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.path)
        for d in (self.rootfs, self.path):
            with contextlib.suppress(FileNotFoundError, OSError):
                os.rmdir(d)
