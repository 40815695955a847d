"""The agent as PID 1, without a VM: started by ``unshare`` in new PID, mount, network, UTS
and IPC namespaces it mounts its own /proc, /sys, /dev, /run and cgroups (v2, and v1 as
configured), brings its own
``lo`` up, bind-mounts the sandbox resolv.conf over /etc/resolv.conf, and "powers off" on
DestroySandbox: reboot(2) from the init of a child PID namespace only ends that namespace.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from pid1_wrapper import host_cgroup_state, pid1_wrapper

from pykata.protocols import agent_pb2


@pytest.fixture(scope="module")
def agent_address(work_dir: Path) -> str:
    return f"unix://{work_dir}/agent.sock"


@pytest.fixture(scope="module")
def host_cgroups_before(cgroup_layout: str) -> tuple[Any, Any]:
    return host_cgroup_state()


@pytest.fixture(scope="module")
def agent_wrapper(cgroup_layout: str, host_cgroups_before: tuple[Any, Any]) -> list[str]:
    # Its own cgroup mounts: the host's /sys/fs/cgroup is the whole machine's.
    return pid1_wrapper(cgroup_layout)


@pytest.fixture(scope="module", params=["v2", "v1"])
def cgroup_layout(request: pytest.FixtureRequest) -> str:
    layout: str = request.param
    return layout


@pytest.fixture(scope="module")
def agent_args(cgroup_layout: str, work_dir: Path) -> list[str]:
    # As PID 1 the agent would read this host's kernel command line; a config file replaces it.
    config = work_dir / f"agent-{cgroup_layout}.toml"
    config.write_text(f"unified_cgroup_hierarchy = {str(cgroup_layout == 'v2').lower()}\n")
    return ["--config", str(config)]


@pytest.fixture(scope="module")
def init_pid(agent_process: subprocess.Popen[bytes]) -> int:
    """The agent's pid as seen from here (the child of unshare)."""
    with open(f"/proc/{agent_process.pid}/task/{agent_process.pid}/children") as f:
        (pid,) = f.read().split()
    # Everything below relies on the agent being init of its own PID namespace only.
    assert os.readlink(f"/proc/{pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
    return int(pid)


def mounts_of(pid: int) -> dict[str, str]:
    result = {}
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            result[left.split()[4]] = right.split()[0]
    return result


def alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def test_init_mounts_and_loopback(init_pid: int, cgroup_layout: str) -> None:
    mounts = mounts_of(init_pid)
    assert mounts["/proc"] == "proc"
    assert mounts["/sys"] == "sysfs"
    assert mounts["/dev"] == "devtmpfs"
    assert mounts["/dev/pts"] == "devpts"
    assert mounts["/dev/shm"] == "tmpfs"
    assert mounts["/run"] == "tmpfs"
    if cgroup_layout == "v2":
        assert mounts["/sys/fs/cgroup"] == "cgroup2"
    else:
        assert mounts["/sys/fs/cgroup"] == "tmpfs"
        for controller in ("memory", "cpu", "cpuacct", "devices", "freezer", "pids"):
            assert mounts[f"/sys/fs/cgroup/{controller}"] == "cgroup", controller
    assert os.readlink(f"/proc/{init_pid}/root/dev/ptmx") == "pts/ptmx"
    flags = int(read(f"/proc/{init_pid}/root/sys/class/net/lo/flags"), 16)
    assert flags & 0x1  # IFF_UP in the agent's own network namespace


def test_sigint_does_not_stop_init(init_pid: int, agent_log: Path) -> None:
    os.kill(init_pid, signal.SIGINT)
    for _ in range(100):
        if "SIGINT ignored" in agent_log.read_text():
            break
        time.sleep(0.05)
    assert "SIGINT ignored" in agent_log.read_text()
    assert alive(init_pid)


def test_announce_says_init(agent_log: Path, init_pid: int) -> None:
    assert '"init-daemon": true' in agent_log.read_text().splitlines()[0]


async def test_guest_details_report_init_daemon(agent: Any, init_pid: int) -> None:
    resp = await agent.GetGuestDetails(agent_pb2.GuestDetailsRequest())
    assert resp.agent_details.init_daemon


async def test_dns_is_bind_mounted_over_resolv_conf(agent: Any, init_pid: int) -> None:
    host_resolv = read("/etc/resolv.conf")
    await agent.CreateSandbox(
        agent_pb2.CreateSandboxRequest(hostname="pid1-pod", dns=["nameserver 192.0.2.53"])
    )
    assert read(f"/proc/{init_pid}/root/etc/resolv.conf") == "nameserver 192.0.2.53\n"
    assert read("/etc/resolv.conf") == host_resolv


async def test_destroy_sandbox_powers_off(
    agent: Any, agent_process: subprocess.Popen[bytes], init_pid: int
) -> None:
    await agent.DestroySandbox(agent_pb2.DestroySandboxRequest())
    agent_process.wait(timeout=15)
    assert not alive(init_pid)


def test_the_hosts_cgroup_tree_is_unchanged(
    agent_process: subprocess.Popen[bytes], host_cgroups_before: tuple[Any, Any]
) -> None:
    """The host's /sys/fs/cgroup: same mounts with the same options, same entries."""
    agent_process.wait(timeout=15)
    assert host_cgroup_state() == host_cgroups_before
