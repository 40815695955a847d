"""Which agent the verbs talk to, and where a VM's shared folder and logs are on the host."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

# The guest mounts the kataShared virtio-fs here; container rootfs go in <cid>/rootfs below it.
GUEST_SHARED_DIR = "/run/kata-containers/shared/containers"


@dataclass(frozen=True)
class Target:
    address: str
    name: str  # names the CLI's state file for this agent
    shared_dir: Path | None = None  # host side of the guest's kataShared folder (VM only)
    console_log: Path | None = None

    @property
    def is_vm(self) -> bool:
        return self.shared_dir is not None


def address_target(address: str) -> Target:
    digest = hashlib.sha256(address.encode()).hexdigest()[:16]
    return Target(address=address, name=f"addr-{digest}")


def state_root() -> Path:
    return Path(os.environ.get("XDG_RUNTIME_DIR") or "/run") / "pykata" / "ctl"
