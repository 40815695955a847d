"""The OCI bundle of a container: /run/kata-containers/<cid>/{config.json,rootfs}."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from pykata.agent import beneath
from pykata.agent.errors import InvalidArgument, NotFound
from pykata.agent.mount import MS_BIND, MS_REC, mount, umount_all
from pykata.agent.validation import CONTAINER_BASE, safe_join

ROOT_FIELD = "OCI.Root.Path"


class Bundle:
    def __init__(self, container_id: str, base: str = CONTAINER_BASE) -> None:
        self.base = os.path.normpath(base)
        self.path = safe_join(base, container_id)
        self.rootfs = os.path.join(self.path, "rootfs")
        self.config = os.path.join(self.path, "config.json")

    def create(self, root_source: str) -> None:
        """Make the bundle dir and bind the host-given root (a storage or shared-dir path).

        The root is opened beneath /run/kata-containers without following any symlink (a
        link on the way could point it anywhere in the guest) and bound from that fd onto
        the bundle's rootfs, itself made and opened the same way, so a symlink swapped in
        after the check cannot redirect the bind."""
        flags = os.O_PATH | os.O_DIRECTORY
        try:
            source_fd = beneath.open_beneath(root_source, self.base, ROOT_FIELD, flags)
        except NotFound:
            # As before beneath: a missing root is a bad spec, not a missing object.
            raise InvalidArgument(
                f"{ROOT_FIELD}: container root {root_source!r} is not a directory"
            ) from None
        try:
            beneath.make_dirs(self.rootfs, self.base, ROOT_FIELD)
            if os.path.normpath(root_source) == self.rootfs:
                return
            with beneath.opened(self.rootfs, self.base, ROOT_FIELD, flags) as target_fd:
                mount(
                    beneath.fd_path(source_fd),
                    beneath.fd_path(target_fd),
                    None,
                    MS_BIND | MS_REC,
                )
        finally:
            os.close(source_fd)

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
