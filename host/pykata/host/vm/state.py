"""The state file of a VM started by ``kata-agent-ctl vm up``, for later CLI calls.

``${XDG_RUNTIME_DIR:-/run}/pykata/vms/<name>/vm.json`` holds the agent address
(``hvsock:///…/vsock.sock:1024`` or ``vsock://CID:1024``), the host side of the shared
folder (tag kataShared; laid out like Kata's
``/run/kata-containers/shared/sandboxes/<id>/shared``), the console log and the pids (with
``netns``, the holder of the NIC's network namespace, for ``vm up --net``), and ``net``: the
guest NIC's ``mac``, ``address`` (CIDR), ``gateway`` and ``tap`` (empty without a NIC), and
``hotplug_ports``: how many empty PCIe root ports (``hp0`` at slot 0x10, ...) it has, and
``ops_address``: the agent's ops channel (``vm up --ops-port``; empty without).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

AGENT_PORT = 1024


def runtime_root() -> Path:
    return Path(os.environ.get("XDG_RUNTIME_DIR") or "/run") / "pykata"


def vm_dir(name: str) -> Path:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"bad VM name {name!r}")
    return runtime_root() / "vms" / name


def default_shared_dir(name: str) -> Path:
    return runtime_root() / "shared" / "sandboxes" / name / "shared"


@dataclass
class VMState:
    name: str
    agent_address: str
    shared_dir: str
    console_log: str
    workdir: str
    accel: str
    pids: dict[str, int] = field(default_factory=dict)
    net: dict[str, str] = field(default_factory=dict)
    hotplug_ports: int = 0  # empty PCIe root ports for hot-plugged disks (`--volume`)
    ops_address: str = ""  # the agent's ops channel (docs/ops.md), when booted with one

    @property
    def path(self) -> Path:
        return vm_dir(self.name) / "vm.json"

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(self.path)

    def remove(self) -> None:
        self.remove_named(self.name)

    @staticmethod
    def remove_named(name: str) -> None:
        (vm_dir(name) / "vm.json").unlink(missing_ok=True)

    def running(self) -> dict[str, bool]:
        return {role: process_alive(pid, Path(self.workdir)) for role, pid in self.pids.items()}


def process_alive(pid: int, workdir: Path) -> bool:
    """Is ``pid`` still one of this VM's processes (not a zombie, not a reused pid)?

    Every process of a VM names a path under its workdir on its command line.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    run_state = stat.rsplit(")", 1)[-1].split()[0]
    return run_state != "Z" and str(workdir).encode() in cmdline


def load(name: str) -> VMState:
    """The state of VM ``name``; FileNotFoundError when no such VM was started."""
    path = vm_dir(name) / "vm.json"
    data = json.loads(path.read_text())
    return VMState(**data)


def names() -> list[str]:
    root = runtime_root() / "vms"
    return sorted(p.parent.name for p in root.glob("*/vm.json")) if root.exists() else []
