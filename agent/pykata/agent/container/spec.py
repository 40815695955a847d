"""The Kata-style rewrite of a container's OCI spec (a plain JSON dict) for the guest."""

from __future__ import annotations

import copy
import os
from typing import Any

from pykata.agent.errors import InvalidArgument
from pykata.agent.validation import CONTAINER_BASE, validate_under

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Namespaces the guest does not give a container: the pod's network is the VM's own, and the
# host's time/cgroup namespaces mean nothing in here (the shim strips them too).
DROPPED_NAMESPACES = {"network", "time", "cgroup"}


def rewrite_spec(
    spec: dict[str, Any],
    *,
    container_id: str,
    rootfs: str,
    namespaces: dict[str, str],
    sandbox_pidns: bool,
) -> dict[str, Any]:
    """A copy of ``spec`` ready for the OCI runtime inside the guest.

    ``rootfs`` is the bundle's rootfs (bind of the host-given root); ``namespaces`` maps
    "ipc", "uts" and optionally "pid" to the sandbox's persistent namespace files.
    """
    spec = copy.deepcopy(spec)
    process = spec.get("process")
    if not isinstance(process, dict) or not process.get("args"):
        raise InvalidArgument("the OCI spec has no process to run")
    linux = spec.get("linux")
    if not isinstance(linux, dict):
        raise InvalidArgument("the OCI spec has no linux section")

    # Host hooks cannot run in the guest.
    spec.pop("hooks", None)
    spec["root"] = {"path": rootfs, "readonly": bool(spec.get("root", {}).get("readonly"))}
    process_defaults(process)
    linux["namespaces"] = _namespaces(linux.get("namespaces", []), namespaces, sandbox_pidns)
    linux["cgroupsPath"] = cgroups_path(linux.get("cgroupsPath", ""), container_id)
    spec["mounts"] = [_mount(m) for m in spec.get("mounts", [])]
    return spec


def process_defaults(process: dict[str, Any]) -> None:
    env = process.setdefault("env", [])
    if not any(e.startswith("PATH=") for e in env):
        env.append(DEFAULT_PATH)
    if not process.get("cwd"):
        process["cwd"] = "/"
    process.setdefault("user", {}).setdefault("uid", 0)
    process["user"].setdefault("gid", 0)


def _namespaces(
    requested: list[dict[str, str]], shared: dict[str, str], sandbox_pidns: bool
) -> list[dict[str, str]]:
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
    if sandbox_pidns:
        if not shared.get("pid"):
            raise InvalidArgument("sandbox_pidns requested but the sandbox has no pid namespace")
        pid["path"] = shared["pid"]
    result.append(pid)
    return result


def cgroups_path(requested: str, container_id: str) -> str:
    """A cgroupfs path for the container.

    The agent runs without systemd's cgroup manager, so systemd-style "slice:prefix:name"
    paths (and an empty one) become a plain path of our own.
    """
    if not requested or ":" in requested:
        return f"/kata/{container_id}"
    normal = os.path.normpath("/" + requested.lstrip("/"))
    if normal == "/" or ".." in requested.split("/"):
        raise InvalidArgument(f"invalid cgroupsPath {requested!r}")
    return normal


def _mount(mount: dict[str, Any]) -> dict[str, Any]:
    dest = mount.get("destination", "")
    if not dest.startswith("/") or ".." in dest.split("/"):
        raise InvalidArgument(f"mount destination {dest!r} must be absolute without '..'")
    source = mount.get("source", "")
    # Sources in Kata's tree (shared dir, storages) must not climb out of it.
    if source.startswith(CONTAINER_BASE) or ".." in source.split("/"):
        mount = {**mount, "source": validate_under(source, CONTAINER_BASE)}
    return mount
