"""The command that starts the agent as PID 1 of its own namespaces in tests, with its own
cgroup mounts: a fresh tmpfs on /sys/fs/cgroup in the private mount namespace, then cgroup2
over it (v2) or the host's v1 hierarchies mounted again below it (v1).

A cgroup namespace (``--cgroup``) roots those mounts at the test's own cgroups, so what the
agent creates lies below them, and it keeps the mounts from touching the host's: a cgroup2
mount made from the initial cgroup namespace would reset the hierarchy's system-wide flags
(nsdelegate). The host's /sys/fs/cgroup tmpfs (one superblock for the whole machine, even
seen from a private mount namespace) is neither remounted nor written into.
"""

from __future__ import annotations

import os
import shlex

CGROUP = "/sys/fs/cgroup"

_SETUP = """set -e
mount -t tmpfs -o mode=755,nosuid,nodev,noexec pykata-cgroup {root}
{cgroups}
{extra}
exec "$@"
"""


def host_cgroup_mounts(mountinfo: str = "/proc/self/mountinfo") -> list[tuple[str, str, str]]:
    """(mount point, fstype, mount and super options) of every mount at or below /sys/fs/cgroup."""
    result = []
    with open(mountinfo) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            point = left.split()[4]
            if point == CGROUP or point.startswith(CGROUP + "/"):
                fstype, _, options = right.split()
                result.append((point, fstype, f"{left.split()[5]} {options}"))
    return sorted(result)


def host_cgroup_state() -> tuple[list[tuple[str, str, str]], list[str]]:
    """What the PID-1 tests must leave as it was: the mounts and the top-level entries."""
    return host_cgroup_mounts(), sorted(os.listdir(CGROUP))


def _v1_mounts() -> list[str]:
    commands = []
    for point, fstype, options in host_cgroup_mounts():
        if fstype != "cgroup" or os.path.dirname(point) != CGROUP:
            continue
        supers = [o for o in options.split()[1].split(",") if o not in ("rw", "ro")]
        if not supers or any(o.startswith("name=") for o in supers):
            continue
        name = os.path.basename(point)
        commands.append(f"mkdir -p {CGROUP}/{name}")
        commands.append(f"mount -t cgroup -o {','.join(supers)} cgroup {CGROUP}/{name}")
    for entry in sorted(os.listdir(CGROUP)):
        path = os.path.join(CGROUP, entry)
        if os.path.islink(path):
            commands.append(f"ln -s {shlex.quote(os.readlink(path))} {CGROUP}/{entry}")
    return commands


def pid1_wrapper(layout: str, extra: str = "") -> list[str]:
    """``unshare`` into new namespaces, give the agent its own cgroup mounts, exec it.

    ``extra`` is shell run after the mounts, before the agent starts (in its cgroups)."""
    if layout == "v2":
        cgroups = [f"mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 {CGROUP}"]
    else:
        cgroups = _v1_mounts()
    script = _SETUP.format(root=CGROUP, cgroups="\n".join(cgroups), extra=extra)
    return [
        "unshare",
        "--pid",
        "--fork",
        "--kill-child",
        "--mount",
        "--propagation=private",
        "--net",
        "--uts",
        "--ipc",
        "--cgroup",
        "sh",
        "-c",
        script,
        "pykata-pid1",
    ]
