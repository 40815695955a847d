"""What the guest itself contributes to every container: its security modules, its net.*
sysctls (written in the guest's network namespace, the pod's) and its OCI hooks."""

from __future__ import annotations

import errno
import os
import stat
from typing import Any

from pykata.agent import log
from pykata.agent.container.spec import HOOK_KINDS, sysctl_path
from pykata.agent.errors import FailedPrecondition, InvalidArgument

logger = log.get("container")

LSM_LIST = "/sys/kernel/security/lsm"
# Where a security module shows itself when securityfs is not mounted (PID 1 mounts none).
LSM_MARKERS = {
    "apparmor": "/sys/module/apparmor/parameters/enabled",
    "selinux": "/sys/fs/selinux/enforce",
}


def guest_lsms(lsm_list: str = LSM_LIST, markers: dict[str, str] = LSM_MARKERS) -> frozenset[str]:
    """The security modules active in this kernel."""
    try:
        with open(lsm_list) as f:
            return frozenset(name for name in f.read().strip().split(",") if name)
    except OSError:
        pass
    found = set()
    for name, marker in markers.items():
        try:
            with open(marker) as f:
                value = f.read().strip()
        except OSError:
            continue
        # apparmor's parameter says Y/N; selinux's enforce exists only when it is on.
        if value != "N":
            found.add(name)
    return frozenset(found)


def apply_net_sysctls(sysctls: dict[str, str], container_id: str) -> None:
    """Write ``sysctls`` through this process's /proc/sys/net: the guest's network namespace,
    which the containers share. A sysctl this kernel lacks is skipped, as Kata does."""
    for name, value in sysctls.items():
        path = sysctl_path(name)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            logger.warning(
                "sysctl not in this kernel, skipped",
                extra={"container": container_id, "sysctl": name},
            )
            continue
        except OSError as exc:
            raise FailedPrecondition(f"sysctl {name}: {exc.strerror}") from exc
        try:
            os.write(fd, value.encode())
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ERANGE):
                raise InvalidArgument(f"sysctl {name}={value!r}: {exc.strerror}") from exc
            raise FailedPrecondition(f"sysctl {name}: {exc.strerror}") from exc
        finally:
            os.close(fd)
        logger.info(
            "sysctl set in the guest network namespace",
            extra={"container": container_id, "sysctl": name, "value": value},
        )


def load_guest_hooks(directory: str) -> dict[str, list[dict[str, Any]]]:
    """OCI hooks from ``<directory>/{prestart,poststart,poststop}/``: every executable regular
    file (symlinks are not followed), run with its name and the hook kind as arguments."""
    if not directory:
        return {}
    if not os.path.isabs(directory):
        raise InvalidArgument(f"guest_hook_path {directory!r} must be absolute")
    hooks: dict[str, list[dict[str, Any]]] = {}
    for kind in HOOK_KINDS:
        folder = os.path.join(os.path.normpath(directory), kind)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        found = []
        for entry in entries:
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode) or not info.st_mode & 0o111:
                continue
            found.append({"path": entry.path, "args": [entry.name, kind]})
        if found:
            hooks[kind] = found
    logger.info(
        "guest hooks",
        extra={
            "guest_hook_path": directory,
            "hooks": {kind: [h["path"] for h in items] for kind, items in hooks.items()},
        },
    )
    return hooks
