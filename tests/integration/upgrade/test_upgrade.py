"""Hot upgrade of the real agent as PID 1 (its own PID, mount, network, UTS, IPC and cgroup
namespaces; cgroup v2) over the ops channel, with containers running across it: nothing lost,
nothing repeated, every pre-upgrade container and call still served; broken agents refused or
rolled back; twenty upgrades in a row leak nothing."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from agent_pod import COUNTER, RPC_TIMEOUT, Counter, Pod

from pykata.host.agent_wheel import sha256_of
from pykata.host.ctl.ops import send_upgrade, upgrade, wait_outcome
from pykata.protocols import agent_pb2, health_pb2, ops_pb2
from pykata.ttrpc import Client
from pykata.ttrpc.errors import FailedPrecondition, InvalidArgument

pytestmark = pytest.mark.root

UPGRADE_WITHIN = 120
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"]


@pytest.fixture(scope="module")
def cgroup_layout() -> str:
    return "v2"


def versions_dir(init_pid: int) -> list[str]:
    out = subprocess.run(
        ["nsenter", "-t", str(init_pid), "-m", "ls", "-A", "/run/kata-agent/versions"],
        capture_output=True,
        text=True,
    ).stdout
    return out.split()


async def status_of(ops: Any) -> ops_pb2.StatusResponse:
    status: ops_pb2.StatusResponse = await ops.Status(ops_pb2.StatusRequest(), timeout=60)
    return status


def pids_of(status: ops_pb2.StatusResponse) -> dict[str, list[int]]:
    return {c.id: sorted(p.pid for p in c.processes) for c in status.containers}


async def test_upgrade_mid_container_loses_nothing(
    pod: Pod, ops: Any, wheels: dict[str, Path], init_pid: int, agent_address: str
) -> None:
    await pod.start("counter", ["sh", "-c", COUNTER])
    await pod.start("waiter", ["sh", "-c", "read x; exit 7"])
    counter = Counter(pod, "counter")
    waited = asyncio.ensure_future(pod.wait("waiter", "waiter"))
    await counter.lines_beyond(20)
    async with await Client.connect(agent_address, timeout=10) as other:
        health = other.stub(HEALTH_SERVICE)
        version = await health.Version(health_pb2.CheckRequest(), timeout=RPC_TIMEOUT)
        assert version.agent_version == "0.1.0"
        before = await status_of(ops)

        done = await upgrade(ops, wheels["v1"], within=UPGRADE_WITHIN)

        assert (done.phase, done.from_version, done.to_version) == ("done", "0.1.0", "0.1.0+up1")
        assert done.generation == 1 and done.pause_seconds > 0
        # A connection opened before the upgrade is served by the new agent.
        version = await health.Version(health_pb2.CheckRequest(), timeout=RPC_TIMEOUT)
        assert version.agent_version == "0.1.0+up1"
    after = await status_of(ops)
    assert (after.pid, after.generation, after.agent_version) == (1, 1, "0.1.0+up1")
    assert after.uptime_seconds > before.uptime_seconds
    assert pids_of(after) == pids_of(before)
    # The new agent starts as lean as the old one (no OpenSSL: ~5 MiB).
    assert after.rss_bytes < before.rss_bytes + (2 << 20)
    await counter.lines_beyond(50)
    assert not waited.done()

    # The WaitProcess begun before the upgrade gets the exit code of an exit after it.
    await pod.write("waiter", b"go\n")
    assert await asyncio.wait_for(waited, RPC_TIMEOUT) == 7
    # exec, stats and signals on a pre-upgrade container.
    assert await pod.exec("counter", "hi", ["echo", "hello"]) == (0, b"hello\n")
    stats = await pod.agent.StatsContainer(
        agent_pb2.StatsContainerRequest(container_id="counter"), timeout=RPC_TIMEOUT
    )
    assert stats.cgroup_stats.cpu_stats.cpu_usage.total_usage > 0
    assert len(await counter.finish()) > 70
    for cid in ("counter", "waiter"):
        await pod.remove(cid)
    assert versions_dir(init_pid) == [sha256_of(wheels["v1"])]


@pytest.mark.parametrize(
    ("request_fields", "error", "message"),
    [
        ({"sha256": "xyz", "commit": True}, InvalidArgument, "64 hex digits"),
        (
            {"sha256": "a" * 64, "size": 10, "offset": 5, "data": b"x"},
            FailedPrecondition,
            "offset 0",
        ),
        ({"sha256": "a" * 64, "size": 0, "data": b"x"}, InvalidArgument, "size must be"),
        ({"sha256": "a" * 64, "commit": True}, FailedPrecondition, "nothing uploaded"),
        ({"sha256": "a" * 64, "path": "rel.whl", "commit": True}, InvalidArgument, "absolute"),
        (
            {"sha256": "a" * 64, "path": "/nonexistent.whl", "commit": True},
            FailedPrecondition,
            "no file",
        ),
        (
            {"sha256": "a" * 64, "size": 3, "data": b"abc", "commit": True},
            InvalidArgument,
            "mismatch",
        ),
    ],
)
async def test_bad_upgrade_requests_are_refused_and_the_agent_serves_on(
    ops: Any, request_fields: dict[str, Any], error: type[Exception], message: str
) -> None:
    before = await status_of(ops)
    with pytest.raises(error, match=message):
        await ops.Upgrade(ops_pb2.UpgradeRequest(**request_fields), timeout=RPC_TIMEOUT)
    after = await status_of(ops)
    assert (after.generation, after.agent_version) == (before.generation, before.agent_version)


async def test_a_wheel_failing_its_self_check_is_refused_before_the_switch(
    pod: Pod, ops: Any, wheels: dict[str, Path]
) -> None:
    before = await status_of(ops)
    with pytest.raises(FailedPrecondition, match=r"self-check failed.*no_such_mod"):
        await send_upgrade(ops, wheels["bad-self-check"].read_bytes())
    status = await ops.UpgradeStatus(ops_pb2.UpgradeStatusRequest(), timeout=RPC_TIMEOUT)
    assert status.phase == "failed" and "no_such_mod" in status.message
    after = await status_of(ops)
    assert (after.generation, after.agent_version) == (before.generation, before.agent_version)


async def test_an_agent_that_cannot_read_the_state_is_refused(
    ops: Any, wheels: dict[str, Path]
) -> None:
    with pytest.raises(FailedPrecondition, match=r"reads state formats \[2\].*upgrade refused"):
        await send_upgrade(ops, wheels["new-state-format"].read_bytes())


async def test_a_wheel_crashing_on_restore_rolls_back_with_containers_untouched(
    pod: Pod, ops: Any, wheels: dict[str, Path], init_pid: int
) -> None:
    await pod.start("steady", ["sh", "-c", COUNTER])
    counter = Counter(pod, "steady")
    await counter.lines_beyond(20)
    before = await status_of(ops)
    fds = fd_count(init_pid)
    await send_upgrade(ops, wheels["crash-on-restore"].read_bytes())
    status = await wait_outcome(ops, UPGRADE_WITHIN)
    assert status.phase == "rolled-back"
    assert "broken on purpose" in status.message
    after = await status_of(ops)
    assert (after.agent_version, after.generation) == (before.agent_version, before.generation)
    assert pids_of(after) == pids_of(before)
    assert fd_count(init_pid) == fds
    await counter.lines_beyond(50)
    await counter.finish()
    await pod.remove("steady")


async def ctl_upgrade(ops_address: str, wheel: Path, *extra: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pykata.host.ctl.main",
        "ops",
        "upgrade",
        "--server-address",
        ops_address,
        str(wheel),
        *extra,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_kata_agent_ctl_upgrades_from_chunks_and_from_a_guest_path(
    ops: Any, ops_address: str, wheels: dict[str, Path]
) -> None:
    code, out = await ctl_upgrade(ops_address, wheels["v2"])
    assert code == 0 and "-> 0.1.0+up2" in out
    assert (await status_of(ops)).agent_version == "0.1.0+up2"
    # The tests' /tmp is the agent's too, as the shared folder is a guest's.
    code, out = await ctl_upgrade(ops_address, wheels["v1"], "--guest-path", str(wheels["v1"]))
    assert code == 0 and "-> 0.1.0+up1" in out
    code, out = await ctl_upgrade(ops_address, wheels["crash-on-restore"])
    assert code == 1 and '"phase": "rolled-back"' in out
    assert (await status_of(ops)).agent_version == "0.1.0+up1"


async def test_a_new_agent_not_ready_in_time_is_replaced_by_the_previous_one(
    pod: Pod, ops: Any, wheels: dict[str, Path], init_pid: int
) -> None:
    await pod.start("patient", ["sh", "-c", COUNTER])
    counter = Counter(pod, "patient")
    await counter.lines_beyond(20)
    before = await status_of(ops)
    fds = fd_count(init_pid)
    await send_upgrade(ops, wheels["hang-on-restore"].read_bytes(), ready_timeout=3)
    status = await wait_outcome(ops, UPGRADE_WITHIN)
    assert (status.phase, status.message) == (
        "rolled-back",
        "the new agent was not ready within 3s",
    )
    after = await status_of(ops)
    assert (after.agent_version, after.generation) == (before.agent_version, before.generation)
    assert pids_of(after) == pids_of(before)
    assert fd_count(init_pid) == fds
    await counter.lines_beyond(20)
    await counter.finish()
    await pod.remove("patient")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def mounts(pid: int) -> list[str]:
    """The agent's mounts (below /run: bundles, storages, namespaces) with source and type.
    Others may come and go with the host's (the tests' /tmp is the host's)."""
    result = []
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        point = left.split()[4]
        if point == "/run" or point.startswith("/run/"):
            result.append(f"{point} {' '.join(right.split()[:2])}")
    return sorted(result)


def rss_kib(pid: int) -> int:
    match = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    assert match
    return int(match[1])


async def test_twenty_upgrades_in_a_row_leak_no_fd_mount_or_memory(
    pod: Pod, ops: Any, wheels: dict[str, Path], init_pid: int
) -> None:
    await pod.start("long", ["sh", "-c", COUNTER])
    counter = Counter(pod, "long")
    await counter.lines_beyond(10)
    # One upgrade first, so that both ends of the comparison run an unpacked wheel.
    await upgrade(ops, wheels["v2"], within=UPGRADE_WITHIN)
    await counter.lines_beyond(5)
    fds, mounted, rss = fd_count(init_pid), mounts(init_pid), rss_kib(init_pid)
    generation = (await status_of(ops)).generation
    for i in range(20):
        await upgrade(ops, wheels["v1" if i % 2 == 0 else "v2"], within=UPGRADE_WITHIN)
    await counter.lines_beyond(5)
    status = await status_of(ops)
    assert (status.generation, status.agent_version) == (generation + 20, "0.1.0+up2")
    assert fd_count(init_pid) == fds
    assert mounts(init_pid) == mounted
    # Each upgrade starts a fresh interpreter: RSS comes back to its level, give or take.
    assert rss_kib(init_pid) < rss + 4 * 1024
    assert versions_dir(init_pid) == [sha256_of(wheels["v2"])]
    await counter.finish()
    await pod.remove("long")
    dump = json.loads((await ops.DumpState(ops_pb2.DumpStateRequest(), timeout=60)).json)
    assert dump["sandbox"]["containers"] == []
