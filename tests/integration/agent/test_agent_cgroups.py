"""cgroupsPath attacks against the real agent as PID 1 (v2, its own cgroup mounts in a cgroup
namespace; the agent sits in a cgroup of its own, as under systemd): a container's cgroup is
always one the agent creates below /kata, never the agent's own, one above it, another
container's or a foreign one, and a dropped client during CreateContainer leaves nothing."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_pod import SHARED, share_in
from pid1_wrapper import pid1_wrapper

from pykata.agent.rpc.convert.oci import from_dict
from pykata.protocols import agent_pb2, health_pb2, oci_pb2
from pykata.ttrpc import Client
from pykata.ttrpc.errors import InvalidArgument, NotFound

pytestmark = pytest.mark.root

RPC_TIMEOUT = 30
AGENT_CGROUP = f"pykata-agent-{secrets.token_hex(4)}"
FOREIGN = f"pykata-foreign-{secrets.token_hex(4)}"
POD = f"pykata-pod-{secrets.token_hex(4)}"
AGENT_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"]


def host_v2_root() -> Path:
    """The host directory of this process's v2 cgroup: the root of the agent's namespace."""
    with open("/proc/self/cgroup") as f:
        path = next(line[3:].strip() for line in f if line.startswith("0::"))
    for mount in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
        if (mount / "cgroup.procs").exists():
            return mount / path.lstrip("/")
    pytest.skip("no cgroup v2 hierarchy on this host")


@pytest.fixture(scope="module")
def agent_address(work_dir: Path) -> str:
    return f"unix://{work_dir}/agent.sock"


@pytest.fixture(scope="module")
def agent_wrapper() -> Iterator[list[str]]:
    own = host_v2_root() / AGENT_CGROUP
    # The agent in a cgroup of its own, as a systemd service's is.
    move = (
        f"mkdir /sys/fs/cgroup/{AGENT_CGROUP}\necho $$ > /sys/fs/cgroup/{AGENT_CGROUP}/cgroup.procs"
    )
    yield pid1_wrapper("v2", extra=move)
    with contextlib.suppress(OSError):
        (own / "cgroup.freeze").write_text("0")
    for _ in range(50):
        try:
            own.rmdir()
            break
        except FileNotFoundError:
            break
        except OSError:
            time.sleep(0.1)


@pytest.fixture(scope="module")
def agent_args(work_dir: Path) -> list[str]:
    config = work_dir / "agent.toml"
    config.write_text("unified_cgroup_hierarchy = true\n")
    hooks = work_dir / "hooks" / "prestart" / "slow"
    hooks.parent.mkdir(parents=True)
    hooks.write_text(f"#!/bin/sh\nif [ -e {work_dir}/slow ]; then sleep 2; fi\nexit 0\n")
    hooks.chmod(0o755)
    return ["--config", str(config)]


@pytest.fixture(scope="module")
def init_pid(agent_process: subprocess.Popen[bytes]) -> int:
    with open(f"/proc/{agent_process.pid}/task/{agent_process.pid}/children") as f:
        (pid,) = f.read().split()
    return int(pid)


def agent_view(init_pid: int, path: str) -> Path:
    return Path(f"/proc/{init_pid}/root{path}")


def request(cid: str, cgroups_path: str, root: str = "") -> agent_pb2.CreateContainerRequest:
    data = {
        "ociVersion": "1.0.2",
        "process": {"args": ["sleep", "3600"], "env": ["PATH=/bin"], "cwd": "/"},
        "root": {"path": root or f"{SHARED}/{cid}/rootfs"},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]},
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")],
            "cgroupsPath": cgroups_path,
        },
    }
    return agent_pb2.CreateContainerRequest(
        container_id=cid, exec_id=cid, OCI=from_dict(data, oci_pb2.Spec())
    )


async def healthy(address: str) -> bool:
    client = await Client.connect(address, timeout=5.0)
    try:
        resp = await client.stub(HEALTH_SERVICE).Check(health_pb2.CheckRequest(), timeout=5)
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)
    finally:
        await client.close()


async def remove(agent: Any, cid: str) -> None:
    await agent.RemoveContainer(
        agent_pb2.RemoveContainerRequest(container_id=cid), timeout=RPC_TIMEOUT
    )


async def test_create_sandbox(agent: Any, work_dir: Path) -> None:
    await agent.CreateSandbox(
        agent_pb2.CreateSandboxRequest(
            hostname="cg", sandbox_id="cg", guest_hook_path=str(work_dir / "hooks")
        ),
        timeout=RPC_TIMEOUT,
    )


async def test_cgroups_path_naming_the_agents_own_cgroup_never_freezes_it(
    agent: Any, agent_address: str, init_pid: int, busybox_rootfs: Path
) -> None:
    share_in(init_pid, busybox_rootfs, "own")
    await agent.CreateContainer(request("own", f"/{AGENT_CGROUP}"), timeout=RPC_TIMEOUT)
    await agent.StartContainer(
        agent_pb2.StartContainerRequest(container_id="own"), timeout=RPC_TIMEOUT
    )
    # Killing everything in the container's cgroup freezes it first.
    await asyncio.wait_for(remove(agent, "own"), 15)
    assert await healthy(agent_address)
    own = agent_view(init_pid, f"/sys/fs/cgroup/{AGENT_CGROUP}")
    assert (own / "cgroup.freeze").read_text().strip() == "0"
    assert str(init_pid) in (host_v2_root() / AGENT_CGROUP / "cgroup.procs").read_text().split()


@pytest.mark.parametrize("path", ["/..", "/kata/../..", "a/../../b", "../sys"])
async def test_cgroups_path_with_dot_dot_is_refused(agent: Any, path: str) -> None:
    with pytest.raises(InvalidArgument, match="cgroupsPath"):
        await agent.CreateContainer(request("dots", path), timeout=RPC_TIMEOUT)


async def test_cgroups_path_of_another_container_is_refused(
    agent: Any, init_pid: int, busybox_rootfs: Path
) -> None:
    for cid in ("first", "second"):
        share_in(init_pid, busybox_rootfs, cid)
    await agent.CreateContainer(request("first", f"/{POD}/first"), timeout=RPC_TIMEOUT)
    await agent.StartContainer(
        agent_pb2.StartContainerRequest(container_id="first"), timeout=RPC_TIMEOUT
    )
    for path in (f"/{POD}/first", f"/{POD}/first/nested", f"/{POD}"):
        with pytest.raises(InvalidArgument, match="cgroupsPath"):
            await agent.CreateContainer(request("second", path), timeout=RPC_TIMEOUT)
    # The first container's processes are all still there.
    procs = agent_view(init_pid, f"/sys/fs/cgroup/kata/{POD}/first/cgroup.procs")
    assert procs.read_text().split()
    stats = await agent.StatsContainer(
        agent_pb2.StatsContainerRequest(container_id="first"), timeout=RPC_TIMEOUT
    )
    assert stats.cgroup_stats.pids_stats.current >= 1 or procs.read_text().split()
    await remove(agent, "first")
    # The parent the agent made for it goes with it.
    assert not agent_view(init_pid, f"/sys/fs/cgroup/kata/{POD}").exists()


async def test_a_foreign_cgroup_and_its_sentinel_survive(
    agent: Any, init_pid: int, busybox_rootfs: Path
) -> None:
    foreign = host_v2_root() / "kata" / FOREIGN
    foreign.mkdir(parents=True)
    sentinel = subprocess.Popen(["sleep", "300"])  # noqa: ASYNC220
    try:
        (foreign / "cgroup.procs").write_text(str(sentinel.pid))
        # A create that fails (no such root) tears down whatever cgroup it would have had;
        share_in(init_pid, busybox_rootfs, "intruder")
        for path in (f"/kata/{FOREIGN}", f"/{FOREIGN}"):
            with pytest.raises(InvalidArgument):
                await agent.CreateContainer(
                    request("intruder", path, root=f"{SHARED}/nothing-here/rootfs"),
                    timeout=RPC_TIMEOUT,
                )
        # ... and one that would run in it is refused: the cgroup exists.
        with pytest.raises(InvalidArgument, match="cgroupsPath"):
            await agent.CreateContainer(request("intruder", f"/{FOREIGN}"), timeout=RPC_TIMEOUT)
        assert sentinel.poll() is None
        assert foreign.is_dir()
        assert (foreign / "cgroup.procs").read_text().split() == [str(sentinel.pid)]
    finally:
        sentinel.kill()
        sentinel.wait()
        for _ in range(50):
            with contextlib.suppress(OSError):
                foreign.rmdir()
            if not foreign.exists():
                break
            await asyncio.sleep(0.1)


async def test_a_dropped_client_during_create_container_leaves_nothing(
    agent: Any, agent_address: str, init_pid: int, busybox_rootfs: Path, work_dir: Path
) -> None:
    share_in(init_pid, busybox_rootfs, "dropped")
    (work_dir / "slow").touch()  # the guest prestart hook now takes 2 s
    try:
        client = await Client.connect(agent_address, timeout=5.0)
        call = asyncio.ensure_future(
            client.stub(AGENT_SERVICE).CreateContainer(
                request("dropped", "/dropped"), timeout=RPC_TIMEOUT
            )
        )
        await asyncio.sleep(0.8)
        await client.close()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await call
        await asyncio.sleep(3)
    finally:
        (work_dir / "slow").unlink()
    with pytest.raises(NotFound):
        await agent.StatsContainer(
            agent_pb2.StatsContainerRequest(container_id="dropped"), timeout=RPC_TIMEOUT
        )
    mounts = Path(f"/proc/{init_pid}/mountinfo").read_text()  # noqa: ASYNC240
    assert "/run/kata-containers/dropped/rootfs" not in mounts
    assert not agent_view(init_pid, "/run/kata-containers/dropped").exists()
    assert not agent_view(init_pid, "/sys/fs/cgroup/kata/dropped").exists()
    # The same id can be created again: nothing of it was left behind.
    await agent.CreateContainer(request("dropped", "/dropped"), timeout=RPC_TIMEOUT)
    await remove(agent, "dropped")
    assert not agent_view(init_pid, "/sys/fs/cgroup/kata/dropped").exists()


async def test_destroy_sandbox(agent: Any, agent_process: subprocess.Popen[bytes]) -> None:
    await agent.DestroySandbox(agent_pb2.DestroySandboxRequest(), timeout=RPC_TIMEOUT)
    agent_process.wait(timeout=15)
    assert agent_process.returncode is not None
