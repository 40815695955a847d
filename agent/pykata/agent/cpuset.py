"""Running containers' cpusets after a CPU hot-add (OnlineCPUMem), as Kata widens them.

A new CPU does not reach a cgroup whose ``cpuset.cpus`` was set before it came: v1 copies the
parent's list into each child at creation, v2 keeps lists written explicitly. So, top-down,
every ancestor below the hierarchy's root that holds an explicit list gets all online CPUs,
then the container its spec's ``cpus`` (they may name the new CPU), or all online CPUs when it
had an explicit list of its own. An empty v2 list inherits and is left alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from pykata.agent import log
from pykata.agent.cgroups.v1 import CgroupV1

if TYPE_CHECKING:
    from pykata.agent.container.container import Container

logger = log.get("guest")

CPUS = "cpuset.cpus"
ONLINE_CPUS = "/sys/devices/system/cpu/online"


def _explicit(directory: Path) -> bool:
    try:
        return bool((directory / CPUS).read_text().strip())
    except OSError:
        return False


def widen(root: Path, directory: Path, guest_cpus: str, container_cpus: str) -> None:
    """``directory``: the container's cgroup below the cpuset hierarchy ``root``."""
    parents = [p for p in reversed(directory.relative_to(root).parents) if p != Path(".")]
    for parent in parents:
        if _explicit(root / parent):
            (root / parent / CPUS).write_text(guest_cpus)
    if container_cpus:
        (directory / CPUS).write_text(container_cpus)
    elif _explicit(directory):
        (directory / CPUS).write_text(guest_cpus)


def widen_containers(containers: Iterable[Container], online: str = ONLINE_CPUS) -> None:
    """Every container's cpuset after CPUs came online; one failing is logged, not fatal."""
    with open(online) as f:
        guest_cpus = f.read().strip()
    for container in containers:
        cgroup = container.cgroup
        if isinstance(cgroup, CgroupV1):
            root, directory = cgroup.root / "cpuset", cgroup.dir("cpuset")
        else:
            root, directory = cgroup.root, cgroup.dir
        cpus = container.spec.get("linux", {}).get("resources", {}).get("cpu", {}).get("cpus", "")
        try:
            widen(root, directory, guest_cpus, cpus)
        except (OSError, ValueError) as exc:
            logger.warning(
                "cannot update the container's cpuset",
                extra={"container": container.id, "error": str(exc)},
            )
