"""The ops channel (pykata.ops.v1.Ops) of the real agent, on a unix socket of its own beside
the agent API: Status, SetLogLevel, DumpState, and its independence from a busy shim
connection."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import agent_pod
import pytest

from pykata.protocols import agent_pb2, health_pb2, oci_pb2, ops_pb2
from pykata.ttrpc import Client
from pykata.ttrpc.errors import InvalidArgument

pytestmark = pytest.mark.root

RUN = secrets.token_hex(3)
OPS_SERVICE = ops_pb2.DESCRIPTOR.services_by_name["Ops"]
PENDING_READS = 100


@pytest.fixture(scope="module")
def ops_address() -> str:
    return f"unix://@pykata-ops-{RUN}"


@pytest.fixture(scope="module")
def agent_env(ops_address: str) -> dict[str, str]:
    return {"KATA_AGENT_OPS_ADDR": ops_address}


@pytest.fixture
async def ops(ops_address: str, agent_process: subprocess.Popen[bytes]) -> Any:
    async with await Client.connect(ops_address, timeout=10.0) as client:
        yield client.stub(OPS_SERVICE)


def spec(cid: str, args: list[str]) -> oci_pb2.Spec:
    return agent_pod.spec(cid, args, f"pykata-ops-{RUN}")


@pytest.fixture(scope="module")
def sandbox(agent_address: str, agent_process: subprocess.Popen[bytes]) -> None:
    async def create() -> None:
        async with await Client.connect(agent_address) as client:
            stub = client.stub(agent_pb2.DESCRIPTOR.services_by_name["AgentService"])
            await stub.CreateSandbox(
                agent_pb2.CreateSandboxRequest(hostname="ops", sandbox_id=f"ops-{RUN}"), timeout=30
            )

    asyncio.run(create())


@pytest.fixture
async def sleeper(sandbox: None, agent: Any, shared_rootfs: Callable[[str], None]) -> Any:
    """A running container that prints nothing until told to (its stdin closes)."""
    cid = f"sleeper-{secrets.token_hex(3)}"
    shared_rootfs(cid)
    await agent.CreateContainer(
        agent_pb2.CreateContainerRequest(
            container_id=cid, exec_id=cid, OCI=spec(cid, ["sh", "-c", "read x; echo done"])
        ),
        timeout=60,
    )
    await agent.StartContainer(agent_pb2.StartContainerRequest(container_id=cid), timeout=60)
    yield cid
    await agent.RemoveContainer(
        agent_pb2.RemoveContainerRequest(container_id=cid, timeout=30), timeout=60
    )


async def test_status_reports_versions_uptime_memory_and_connections(
    ops: Any, agent_process: subprocess.Popen[bytes], health: Any
) -> None:
    await health.Check(health_pb2.CheckRequest(), timeout=10)  # one agent API connection open
    status = await ops.Status(ops_pb2.StatusRequest(), timeout=10)
    version = await health.Version(health_pb2.CheckRequest(), timeout=10)
    assert status.agent_version == version.agent_version
    assert status.api_version == version.grpc_version
    assert status.pid == agent_process.pid
    assert status.uptime_seconds > 0
    lines = Path(f"/proc/{agent_process.pid}/status").read_text().splitlines()  # noqa: ASYNC240
    rss_kib = next(int(line.split()[1]) for line in lines if line.startswith("VmRSS:"))
    assert abs(status.rss_bytes - rss_kib * 1024) < 8 << 20
    assert status.agent_connections >= 1
    assert status.ops_connections == 1
    assert status.state_format == 1
    assert status.generation == 0


async def test_status_lists_containers_with_their_processes(
    ops: Any, agent: Any, sleeper: str
) -> None:
    status = await ops.Status(ops_pb2.StatusRequest(), timeout=10)
    assert status.sandbox_id == f"ops-{RUN}"
    (container,) = [c for c in status.containers if c.id == sleeper]
    assert container.state == "running"
    (process,) = container.processes
    assert process.exec_id == sleeper and not process.exited
    cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()  # noqa: ASYNC240
    assert cmdline.split(b"\0")[:2] == [b"sh", b"-c"]


async def test_set_log_level_changes_what_the_agent_logs(ops: Any, agent_log: Any) -> None:
    changed = await ops.SetLogLevel(ops_pb2.SetLogLevelRequest(level="warn"), timeout=10)
    assert (changed.previous, changed.level) == ("debug", "warn")
    try:
        status = await ops.Status(ops_pb2.StatusRequest(), timeout=10)
        assert status.log_level == "warn"
        with pytest.raises(InvalidArgument, match="unknown log level 'loud'"):
            await ops.SetLogLevel(ops_pb2.SetLogLevelRequest(level="loud"), timeout=10)
    finally:
        await ops.SetLogLevel(ops_pb2.SetLogLevelRequest(level="debug"), timeout=10)
    assert (await ops.Status(ops_pb2.StatusRequest(), timeout=10)).log_level == "debug"


async def test_dump_state_holds_the_sandbox_containers_and_fds(
    ops: Any, sleeper: str, agent_process: subprocess.Popen[bytes]
) -> None:
    dump = json.loads((await ops.DumpState(ops_pb2.DumpStateRequest(), timeout=10)).json)
    assert dump["format"] == 1
    assert dump["sandbox"]["id"] == f"ops-{RUN}"
    (container,) = [c for c in dump["sandbox"]["containers"] if c["id"] == sleeper]
    (process,) = container["processes"]["live"]
    # The fds named are the agent's own ends of the process's pipes.
    for stream in ("stdin", "stdout", "stderr"):
        fd = process[stream]["fd"]
        assert os.readlink(f"/proc/{agent_process.pid}/fd/{fd}").startswith("pipe:")
    assert process["stdout"]["buffered_bytes"] == 0 and "buffer" not in process["stdout"]


async def test_ops_answers_while_100_reads_are_pending_on_the_agent_api(
    ops: Any, agent: Any, health: Any, sleeper: str
) -> None:
    request = agent_pb2.ReadStreamRequest(container_id=sleeper, exec_id=sleeper, len=1024)
    reads = [asyncio.ensure_future(agent.ReadStdout(request)) for _ in range(PENDING_READS)]
    await health.Check(health_pb2.CheckRequest(), timeout=10)  # they have all been sent
    status = await ops.Status(ops_pb2.StatusRequest(), timeout=10)
    assert not any(read.done() for read in reads)
    (container,) = [c for c in status.containers if c.id == sleeper]
    assert not container.processes[0].exited
    await agent.CloseStdin(
        agent_pb2.CloseStdinRequest(container_id=sleeper, exec_id=sleeper), timeout=10
    )
    answers = await asyncio.wait_for(asyncio.gather(*reads), 60)
    assert b"".join(a.data for a in answers) == b"done\n"


async def ctl(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pykata.host.ctl.main",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_ctl_ops_verbs(
    ops_address: str, sleeper: str, agent_process: subprocess.Popen[bytes]
) -> None:
    code, out, _ = await ctl("ops", "status", "--server-address", ops_address)
    status = json.loads(out)
    assert code == 0 and status["pid"] == agent_process.pid
    assert sleeper in [c["id"] for c in status["containers"]]
    code, out, _ = await ctl("ops", "log-level", "--server-address", ops_address, "info")
    assert code == 0 and json.loads(out) == {"previous": "debug", "level": "info"}
    code, out, _ = await ctl("ops", "log-level", "--server-address", ops_address, "debug")
    assert code == 0
    code, out, _ = await ctl("ops", "dump-state", "--server-address", ops_address)
    assert code == 0 and json.loads(out)["sandbox"]["id"] == f"ops-{RUN}"
    code, _, err = await ctl("ops", "log-level", "--server-address", ops_address, "loud")
    assert code == 1 and "INVALID_ARGUMENT" in err
    code, _, err = await ctl("ops", "status", "--vm", f"no-such-vm-{RUN}")
    assert code == 2 and "no running VM" in err
