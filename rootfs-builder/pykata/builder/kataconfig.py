"""configuration.toml: a complete Kata runtime configuration for the built artifacts.

It drives the Kata Go shim (containerd-shim-kata-v2) through its Cloud Hypervisor code path,
with our `kata-clh` launcher as the hypervisor: the launcher answers the Cloud Hypervisor API
and runs QEMU (KVM when it works, TCG otherwise), so the stock shim runs pods on any machine.
`kata-virtiofsd` takes the shim's virtiofsd flags and runs the host's virtiofsd. With a real
Cloud Hypervisor, point `path` at it instead.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CONFIGURATION = "configuration.toml"
LAUNCHER = "kata-clh"
VIRTIOFSD = "kata-virtiofsd"
# The shim waits this long for the agent after boot; a TCG guest needs 25-40 s on a busy
# 2-core machine (the shim's default of 45 s is for KVM).
DIAL_TIMEOUT_S = 120
# CreateContainer under TCG (crun and the spec rewrite run ~7x slower than on the host).
CREATE_CONTAINER_TIMEOUT_S = 120
MEMORY_MIB = 1024
# Appended to the shim's own command line. Kata's guest kernels leave page and slab zeroing
# on allocation off; Debian's kernel turns it on (twice the cost of a fork or exec under TCG).
KERNEL_PARAMS = "init_on_alloc=0"


@dataclass(frozen=True)
class Artifacts:
    kernel: Path
    flavour: str  # "initrd" or "image"
    artifact: Path


def tools_dir() -> Path:
    """Where this installation's console scripts (kata-clh, kata-virtiofsd) are."""
    return Path(sys.executable).parent


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _section(name: str, values: Mapping[str, object]) -> str:
    lines = [f"[{name}]"] + [f"{key} = {_toml(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def configuration(artifacts: Artifacts, tools: Path, debug: bool = False) -> str:
    """The whole configuration.toml; `debug` turns on the shim's, the launcher's (guest
    console into the shim's log) and the agent's debug output."""
    launcher = str(tools / LAUNCHER)
    virtiofsd = str(tools / VIRTIOFSD)
    hypervisor: dict[str, object] = {
        "path": launcher,
        "valid_hypervisor_paths": [launcher],
        "kernel": str(artifacts.kernel.resolve()),
    }
    if artifacts.flavour == "initrd":
        hypervisor["initrd"] = str(artifacts.artifact.resolve())
        hypervisor["kernel_params"] = KERNEL_PARAMS
    else:
        hypervisor["image"] = str(artifacts.artifact.resolve())
        hypervisor["rootfs_type"] = "ext4"
        # A virtio-blk root: the launcher offers no pmem device.
        hypervisor["disable_image_nvdimm"] = True
        hypervisor["kernel_params"] = f"{KERNEL_PARAMS} systemd.unit=kata-containers.target"
    hypervisor.update(
        {
            "default_vcpus": 1,
            # Kata's default: up to one vCPU per host CPU, hot-added for containers with CPU
            # limits (kata-clh: QEMU device_add; the agent: OnlineCPUMem).
            "default_maxvcpus": 0,
            "default_memory": MEMORY_MIB,
            "shared_fs": "virtio-fs",
            "virtio_fs_daemon": virtiofsd,
            "valid_virtio_fs_daemon_paths": [virtiofsd],
            "virtio_fs_cache": "auto",
            "virtio_fs_cache_size": 0,
            "virtio_fs_extra_args": ["--thread-pool-size=1", "--announce-submounts"],
            "block_device_driver": "virtio-blk",
            # The guest has no SELinux policy (the shim assumes one unless told).
            "disable_guest_selinux": True,
            "enable_debug": debug,
        }
    )
    agent = {
        "enable_debug": debug,
        "debug_console_enabled": False,
        "dial_timeout": DIAL_TIMEOUT_S,
    }
    runtime = {
        "enable_debug": debug,
        "internetworking_model": "tcfilter",
        "disable_guest_seccomp": True,
        "sandbox_cgroup_only": False,
        # Resources are sized once at creation: the launcher cannot hot-plug CPUs.
        "static_sandbox_resource_mgmt": True,
        "create_container_timeout": CREATE_CONTAINER_TIMEOUT_S,
    }
    header = (
        f"# Kata configuration for the {artifacts.flavour} flavour, written by kata-image.\n"
        "# Use it with KATA_CONF_FILE=<this file> (or ctr run --runtime-config-path).\n"
        f"# The hypervisor is our launcher ({LAUNCHER}); with a real Cloud Hypervisor set `path`.\n"
    )
    return "\n".join(
        [
            header,
            _section("hypervisor.clh", hypervisor),
            _section("agent.kata", agent),
            _section("runtime", runtime),
        ]
    )
