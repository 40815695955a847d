"""Which agent the verbs talk to, and where the folder the guest shares with us is on the host."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from pykata.host.ctl.errors import UsageError
from pykata.host.ctl.network import GuestNet
from pykata.host.vm import state as vm_state

# Where the agent expects container roots (it refuses any outside /run/kata-containers); in
# a VM the kataShared virtio-fs is mounted here.
GUEST_SHARED_DIR = "/run/kata-containers/shared/containers"


@dataclass(frozen=True)
class Target:
    address: str
    name: str  # names the CLI's state file for this agent
    # The host folder the agent sees as GUEST_SHARED_DIR; None when unknown (a bare vsock).
    shared_dir: Path | None = None
    virtio_fs: bool = False  # the sandbox must mount the kataShared virtio-fs storage
    console_log: Path | None = None
    net: GuestNet | None = None  # the VM's NIC, configured when the sandbox is created
    qmp_socket: Path | None = None  # the VM's QEMU monitor: `run --volume` hot-plugs disks


def address_target(address: str) -> Target:
    digest = hashlib.sha256(address.encode()).hexdigest()[:16]
    # An agent on a unix socket runs on this host and sees our /run/kata-containers itself.
    shared = Path(GUEST_SHARED_DIR) if address.startswith("unix://") else None
    return Target(address=address, name=f"addr-{digest}", shared_dir=shared)


def vm_target(name: str) -> Target:
    """A VM started by `kata-agent-ctl vm up NAME`, from the VM runner's state file."""
    try:
        vm = vm_state.load(name)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(f"no running VM {name!r}: {exc}") from None
    # Each boot gets its own CLI state: a sandbox of an earlier boot is gone with it.
    boot = vm.pids.get("qemu", 0)
    return Target(
        address=vm.agent_address,
        name=f"vm-{name}-{boot}",
        shared_dir=Path(vm.shared_dir),
        virtio_fs=True,
        console_log=Path(vm.console_log),
        net=GuestNet(mac=vm.net["mac"], address=vm.net["address"], gateway=vm.net["gateway"])
        if vm.net
        else None,
        qmp_socket=Path(vm.workdir) / "qmp.sock",
    )
