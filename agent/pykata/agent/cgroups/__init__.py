"""Container cgroups: v1 (one hierarchy per controller) or v2 (unified), picked from the host."""

from __future__ import annotations

from pathlib import Path

from pykata.agent.cgroups.v1 import CgroupV1, OomEventFd
from pykata.agent.cgroups.v2 import CgroupV2, OomKillWatch

Cgroup = CgroupV1 | CgroupV2
OomNotifier = OomEventFd | OomKillWatch

CGROUP_ROOT = Path("/sys/fs/cgroup")
# Every container cgroup lives below this one: the spec's cgroupsPath is placed under it.
CONTAINER_ROOT = "/kata"


def unified(root: Path = CGROUP_ROOT) -> bool:
    """True when the unified hierarchy is mounted at the root (no v1 controllers)."""
    return (root / "cgroup.controllers").exists()


def open_cgroup(path: str, root: Path = CGROUP_ROOT) -> Cgroup:
    return CgroupV2(path, root) if unified(root) else CgroupV1(path, root)


def own_cgroups(self_cgroup: str = "/proc/self/cgroup") -> set[str]:
    """The agent's own cgroup paths, one per hierarchy ("ID:controllers:/path" lines)."""
    try:
        with open(self_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return set()
    return {line.split(":", 2)[2] or "/" for line in lines if line.count(":") >= 2}


def _within(path: str, parent: str) -> bool:
    """``path`` is ``parent`` or below it (both absolute, normalised)."""
    return parent == "/" or path == parent or path.startswith(parent.rstrip("/") + "/")


def overlaps(a: str, b: str) -> bool:
    """One of the two cgroup paths contains the other (or they are the same)."""
    return _within(a, b) or _within(b, a)


def check_container_path(path: str, in_use: list[str], agent: set[str]) -> str | None:
    """Why ``path`` cannot be a new container's cgroup, or None.

    It must lie below CONTAINER_ROOT, never at or above one of the agent's own cgroups, never
    nest with another container's cgroup (freezing or killing one would reach the other)."""
    if not _within(path, CONTAINER_ROOT) or path == CONTAINER_ROOT:
        return f"{path} is not below {CONTAINER_ROOT}"
    for own in agent:
        if _within(own, path):
            return f"{path} holds the agent's own cgroup {own}"
    for other in in_use:
        if overlaps(path, other):
            return f"{path} overlaps the cgroup {other} of another container"
    return None
