"""The agent as PID 1 of its own namespaces with the ops channel on a unix socket, the pod
helpers and the agent wheels the upgrade tests install. A module sets ``cgroup_layout``."""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_pod import Pod, share_in
from pid1_wrapper import pid1_wrapper

from pykata.host.agent_wheel import build_agent_wheel
from pykata.host.ctl.ops import ops_stub
from pykata.protocols import agent_pb2
from pykata.ttrpc import Client

AGENT_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]


@pytest.fixture(scope="module")
def ops_address(work_dir: Path) -> str:
    return f"unix://{work_dir}/ops.sock"


@pytest.fixture(scope="module")
def agent_env(ops_address: str, cgroup_parent: str, no_agent_left: None) -> dict[str, str]:
    return {"KATA_AGENT_OPS_ADDR": ops_address}


def agents_of(ops_address: str) -> list[int]:
    marker = f"KATA_AGENT_OPS_ADDR={ops_address}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def no_agent_left(ops_address: str) -> Iterator[None]:
    """Once the module's agent was stopped (its fixtures depend on this one), no agent of it
    runs on: however often it was upgraded or rolled back, it still dies with the unshare
    that started it (--kill-child: its parent-death signal)."""
    yield
    left = []
    for _ in range(50):
        left = agents_of(ops_address)
        if not left:
            return
        time.sleep(0.1)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"agents outlived their test module: {left}")


@pytest.fixture(scope="module")
def cgroup_parent(work_dir: Path) -> Iterator[str]:
    """The containers' parent cgroup. What a failed test leaves of it on this host's
    hierarchies (the agent's cgroup namespace is rooted at ours) is removed once the agent
    and its containers are gone (the agent's fixtures depend on this one)."""
    name = f"pykata-upgrade-{work_dir.name.rsplit('-', 1)[-1]}"
    yield name
    # The killed agent's namespace empties itself asynchronously: a cgroup may still be
    # populated for a moment.
    for _ in range(100):
        left = glob.glob(f"/sys/fs/cgroup/**/kata/{name}", recursive=True)
        for top in left:
            for path, _, _ in os.walk(top, topdown=False):
                with contextlib.suppress(OSError):
                    os.rmdir(path)
        if not left:
            return
        time.sleep(0.1)


@pytest.fixture(scope="module")
def agent_address(work_dir: Path) -> str:
    return f"unix://{work_dir}/agent.sock"


@pytest.fixture(scope="module")
def agent_wrapper(cgroup_layout: str) -> list[str]:
    return pid1_wrapper(cgroup_layout)


@pytest.fixture(scope="module")
def agent_args(work_dir: Path, cgroup_layout: str) -> list[str]:
    # As PID 1 the agent would read this host's kernel command line; a config file replaces it.
    config = work_dir / "agent.toml"
    config.write_text(f"unified_cgroup_hierarchy = {str(cgroup_layout == 'v2').lower()}\n")
    return ["--config", str(config)]


@pytest.fixture(scope="module")
def init_pid(agent_process: subprocess.Popen[bytes]) -> int:
    with open(f"/proc/{agent_process.pid}/task/{agent_process.pid}/children") as f:
        (pid,) = f.read().split()
    return int(pid)


@pytest.fixture(scope="module")
def sandbox(agent_address: str, init_pid: int) -> None:
    import asyncio

    async def create() -> None:
        async with await Client.connect(agent_address) as client:
            await client.stub(AGENT_SERVICE).CreateSandbox(
                agent_pb2.CreateSandboxRequest(hostname="up", sandbox_id="upgrade"), timeout=60
            )

    asyncio.run(create())


@pytest.fixture
async def pod(
    agent_address: str, init_pid: int, busybox_rootfs: Path, cgroup_parent: str, sandbox: None
) -> AsyncIterator[Pod]:
    async with await Client.connect(agent_address, timeout=10) as client:
        yield Pod(
            client.stub(AGENT_SERVICE),
            lambda cid: share_in(init_pid, busybox_rootfs, cid),
            cgroup_parent,
        )


@pytest.fixture
async def ops(ops_address: str, agent_process: subprocess.Popen[bytes]) -> AsyncIterator[Any]:
    async with await Client.connect(ops_address, timeout=10) as client:
        yield ops_stub(client)


@pytest.fixture(scope="module")
def wheels(work_dir: Path) -> dict[str, Path]:
    """Agents of this tree at other versions; four broken on purpose."""
    out = work_dir / "wheels"
    return {
        "v1": build_agent_wheel(out, "0.1.0+up1"),
        "v2": build_agent_wheel(out, "0.1.0+up2"),
        "bad-self-check": build_agent_wheel(
            out,
            "0.1.0+bad-check",
            {"pykata/agent/daemon.py": ("import signal\n", "import signal\nimport no_such_mod\n")},
        ),
        "crash-on-restore": build_agent_wheel(
            out,
            "0.1.0+bad-restore",
            {
                "pykata/agent/upgrade/restore.py": (
                    "    state = upgrade_state.from_fd(state_fd)\n",
                    "    raise RuntimeError('broken on purpose')\n",
                )
            },
        ),
        "hang-on-restore": build_agent_wheel(
            out,
            "0.1.0+hang",
            {
                "pykata/agent/upgrade/restore.py": (
                    "    state = upgrade_state.from_fd(state_fd)\n",
                    "    time.sleep(3600)\n    state = upgrade_state.from_fd(state_fd)\n",
                )
            },
        ),
        "new-state-format": build_agent_wheel(
            out,
            "0.2.0",
            {"pykata/agent/upgrade/state.py": ("READABLE = (1,)", "READABLE = (2,)")},
        ),
    }
