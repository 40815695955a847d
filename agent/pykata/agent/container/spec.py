"""The Kata-style rewrite of a container's OCI spec (a plain JSON dict) for the guest."""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from typing import Any

from pykata.agent import beneath, log
from pykata.agent.cgroups import CONTAINER_ROOT
from pykata.agent.errors import InvalidArgument
from pykata.agent.validation import CONTAINER_BASE, validate_under

logger = log.get("spec")

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Namespaces the guest does not give a container: the pod's network is the VM's own, and the
# host's time/cgroup namespaces mean nothing in here (the shim strips them too).
DROPPED_NAMESPACES = {"network", "time", "cgroup"}

HOOK_KINDS = ("prestart", "poststart", "poststop")

_SYSCTL_NAME = re.compile(r"[a-z0-9_./-]+")
# Spec fields that only an LSM of that name can apply.
LSM_FIELDS = {
    "apparmor": (("process", "apparmorProfile"),),
    "selinux": (("process", "selinuxLabel"), ("linux", "mountLabel")),
}


@dataclass
class GuestSpec:
    """The spec for the OCI runtime and what the agent applies itself instead."""

    spec: dict[str, Any]
    # net.* sysctls: for the guest's network namespace, which no container spec names.
    net_sysctls: dict[str, str] = field(default_factory=dict)


def rewrite_spec(
    spec: dict[str, Any],
    *,
    container_id: str,
    rootfs: str,
    namespaces: dict[str, str],
    lsms: frozenset[str] = frozenset(),
    guest_hooks: dict[str, list[dict[str, Any]]] | None = None,
) -> GuestSpec:
    """A copy of ``spec`` ready for the OCI runtime inside the guest.

    ``rootfs`` is the bundle's rootfs (bind of the host-given root); ``namespaces`` maps
    "ipc", "uts" and optionally "pid" (join the sandbox's) to namespace files; ``lsms`` are
    the guest's security modules; ``guest_hooks`` the hooks found below guest_hook_path.
    """
    spec = copy.deepcopy(spec)
    process = spec.get("process")
    if not isinstance(process, dict) or not process.get("args"):
        raise InvalidArgument("the OCI spec has no process to run")
    linux = spec.get("linux")
    if not isinstance(linux, dict):
        raise InvalidArgument("the OCI spec has no linux section")

    # Host hooks cannot run in the guest; the guest's own replace them.
    spec.pop("hooks", None)
    if guest_hooks:
        spec["hooks"] = copy.deepcopy(guest_hooks)
    spec["root"] = {"path": rootfs, "readonly": bool(spec.get("root", {}).get("readonly"))}
    process_defaults(process)
    linux["namespaces"] = _namespaces(linux.get("namespaces", []), namespaces)
    linux["cgroupsPath"] = cgroups_path(linux.get("cgroupsPath", ""), container_id)
    spec["mounts"] = [_mount(m) for m in spec.get("mounts", [])]
    drop_lsm_fields(spec, lsms, container_id)
    net = split_net_sysctls(linux)
    return GuestSpec(spec, net)


def process_defaults(process: dict[str, Any]) -> None:
    env = process.setdefault("env", [])
    if not any(e.startswith("PATH=") for e in env):
        env.append(DEFAULT_PATH)
    if not process.get("cwd"):
        process["cwd"] = "/"
    process.setdefault("user", {}).setdefault("uid", 0)
    process["user"].setdefault("gid", 0)


def drop_lsm_fields(spec: dict[str, Any], lsms: frozenset[str], container_id: str) -> None:
    """Remove labels and profiles of security modules the guest kernel does not have: the
    OCI runtime would fail to apply them (the Rust agent never applies AppArmor either)."""
    for lsm, fields in LSM_FIELDS.items():
        if lsm in lsms:
            continue
        for section, key in fields:
            part = spec.get(section)
            if isinstance(part, dict) and part.pop(key, None):
                logger.info(
                    "security label dropped: the guest has no such LSM",
                    extra={"container": container_id, "field": f"{section}.{key}", "lsm": lsm},
                )


def sysctl_path(name: str) -> str:
    """The /proc/sys file of a sysctl; names are dotted, or slashed as sysctl(8) allows (then
    dots are part of a component, as in interface names)."""
    if not _SYSCTL_NAME.fullmatch(name):
        raise InvalidArgument(f"invalid sysctl name {name!r}")
    parts = name.split("/") if "/" in name else name.split(".")
    if any(part in ("", ".", "..") for part in parts):
        raise InvalidArgument(f"invalid sysctl name {name!r}")
    return "/proc/sys/" + "/".join(parts)


def split_net_sysctls(linux: dict[str, Any]) -> dict[str, str]:
    """Take the net.* sysctls out of ``linux``: the container has no network namespace of its
    own (the guest's is the pod's), so runtimes refuse them; the agent applies them there."""
    sysctls = linux.get("sysctl")
    if not sysctls:
        linux.pop("sysctl", None)
        return {}
    net: dict[str, str] = {}
    rest: dict[str, str] = {}
    for name, value in sysctls.items():
        sysctl_path(name)
        if "\0" in value:
            raise InvalidArgument(f"invalid value for sysctl {name!r}")
        (net if name.startswith(("net.", "net/")) else rest)[name] = value
    if rest:
        linux["sysctl"] = rest
    else:
        linux.pop("sysctl")
    return net


def _namespaces(requested: list[dict[str, str]], shared: dict[str, str]) -> list[dict[str, str]]:
    result = []
    for ns in requested:
        kind = ns.get("type", "")
        if kind in DROPPED_NAMESPACES or kind == "pid":
            continue
        entry = {"type": kind}
        # Host paths mean nothing here; ipc and uts are the sandbox's, shared by its containers.
        if kind in ("ipc", "uts") and shared.get(kind):
            entry["path"] = shared[kind]
        result.append(entry)
    pid = {"type": "pid"}
    if shared.get("pid"):
        pid["path"] = shared["pid"]
    result.append(pid)
    return result


def cgroups_path(requested: str, container_id: str) -> str:
    """A cgroupfs path for the container, always below the agent's CONTAINER_ROOT (/kata).

    The agent runs without systemd's cgroup manager, so systemd-style "slice:prefix:name"
    paths (and an empty one) become /kata/<id>; a plain path is placed below /kata, so it can
    never name the agent's own cgroup, one above it or any other cgroup of the guest.
    """
    if not requested or ":" in requested:
        return f"{CONTAINER_ROOT}/{container_id}"
    if ".." in requested.split("/") or "\0" in requested:
        raise InvalidArgument(f"linux.cgroupsPath {requested!r} must not contain '..'")
    normal = os.path.normpath("/" + requested.lstrip("/"))
    if normal == "/":
        raise InvalidArgument(f"invalid linux.cgroupsPath {requested!r}")
    return CONTAINER_ROOT + normal


def _mount(mount: dict[str, Any]) -> dict[str, Any]:
    dest = mount.get("destination", "")
    if not dest.startswith("/") or ".." in dest.split("/"):
        raise InvalidArgument(f"mount destination {dest!r} must be absolute without '..'")
    source = mount.get("source", "")
    if beneath.is_bind(mount):
        # Bind sources: Kata's tree or /dev/shm only, no symlink on the way.
        field_name = f"mounts[destination={dest}].source"
        return {**mount, "source": beneath.check_bind_source(source, field_name)}
    # Sources in Kata's tree (shared dir, storages) must not climb out of it.
    if source.startswith(CONTAINER_BASE) or ".." in source.split("/"):
        mount = {**mount, "source": validate_under(source, CONTAINER_BASE)}
    return mount
