"""Container cgroups: v1 (one hierarchy per controller) or v2 (unified), picked from the host."""

from __future__ import annotations

from pathlib import Path

from pykata.agent.cgroups.v1 import CgroupV1
from pykata.agent.cgroups.v2 import CgroupV2

Cgroup = CgroupV1 | CgroupV2

CGROUP_ROOT = Path("/sys/fs/cgroup")


def unified(root: Path = CGROUP_ROOT) -> bool:
    """True when the unified hierarchy is mounted at the root (no v1 controllers)."""
    return (root / "cgroup.controllers").exists()


def open_cgroup(path: str, root: Path = CGROUP_ROOT) -> Cgroup:
    return CgroupV2(path, root) if unified(root) else CgroupV1(path, root)
