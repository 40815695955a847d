"""Output larger than one ttRPC response, through the real agent: ReadStdout/ReadStderr asked
for 4 MiB at a time deliver every byte (a read once took 4 MiB out of the process's buffer
and then had its answer refused as too large, losing them)."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from pykata.agent.rpc.convert.oci import from_dict
from pykata.protocols import agent_pb2, oci_pb2
from pykata.ttrpc import Client

pytestmark = pytest.mark.root

SHARED = "/run/kata-containers/shared/containers"
RUN = secrets.token_hex(3)
COUNT = 800_000
# What busybox's `seq 1 COUNT` prints: ~5.9 MB, more than one 4 MiB response can carry.
EXPECTED = b"".join(b"%d\n" % i for i in range(1, COUNT + 1))
# Over 4 MiB, yet small enough for a process nobody reads to finish: the agent buffers 4 MiB
# of each stream and the pipe holds the rest.
WAITED = (4 << 20) + (32 << 10)


def container_spec(cid: str, args: list[str]) -> oci_pb2.Spec:
    spec = {
        "ociVersion": "1.0.2",
        "process": {"args": args, "env": ["PATH=/bin", "HOME=/"], "cwd": "/"},
        "root": {"path": f"{SHARED}/{cid}/rootfs"},
        "hostname": "it",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]},
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
            "cgroupsPath": f"/pykata-it-{RUN}-{cid}",
        },
    }
    return from_dict(spec, oci_pb2.Spec())


@pytest.fixture(scope="module")
def sandbox(agent_address: str, agent_process: subprocess.Popen[bytes]) -> None:
    async def create() -> None:
        async with await Client.connect(agent_address) as client:
            stub = client.stub(agent_pb2.DESCRIPTOR.services_by_name["AgentService"])
            await stub.CreateSandbox(
                agent_pb2.CreateSandboxRequest(hostname="it", sandbox_id="it-reads"), timeout=30
            )

    asyncio.run(create())


async def read_4mib_at_a_time(agent: Any, cid: str, eid: str, *, stderr: bool) -> bytes:
    read = agent.ReadStderr if stderr else agent.ReadStdout
    chunks: list[bytes] = []
    while True:
        response = await read(
            agent_pb2.ReadStreamRequest(container_id=cid, exec_id=eid, len=4 << 20), timeout=60
        )
        if not response.data:
            return b"".join(chunks)
        assert len(response.data) < 4 << 20
        chunks.append(response.data)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_output_over_4_mib_read_4_mib_at_a_time_arrives_whole(
    sandbox: None, agent: Any, shared_rootfs: Callable[[str], None]
) -> None:
    cid = f"bigout-{RUN}"
    shared_rootfs(cid)
    await agent.CreateContainer(
        agent_pb2.CreateContainerRequest(
            container_id=cid,
            exec_id=cid,
            OCI=container_spec(
                cid,
                [
                    "sh",
                    "-c",
                    f"seq 1 {COUNT} | head -c {WAITED}; seq 1 {COUNT} | head -c {WAITED} >&2",
                ],
            ),
        ),
        timeout=60,
    )
    await agent.StartContainer(agent_pb2.StartContainerRequest(container_id=cid), timeout=60)
    try:
        # Waited first: all of it is then in the agent's buffers, the case that lost data.
        status = await agent.WaitProcess(
            agent_pb2.WaitProcessRequest(container_id=cid, exec_id=cid), timeout=60
        )
        assert status.status == 0
        out = await read_4mib_at_a_time(agent, cid, cid, stderr=False)
        err = await read_4mib_at_a_time(agent, cid, cid, stderr=True)
        assert (len(out), sha(out)) == (WAITED, sha(EXPECTED[:WAITED]))
        assert (len(err), sha(err)) == (WAITED, sha(EXPECTED[:WAITED]))
    finally:
        await agent.RemoveContainer(
            agent_pb2.RemoveContainerRequest(container_id=cid, timeout=30), timeout=60
        )


async def test_exec_output_read_while_it_is_written_arrives_whole(
    sandbox: None, agent: Any, shared_rootfs: Callable[[str], None]
) -> None:
    cid = f"bigexec-{RUN}"
    shared_rootfs(cid)
    await agent.CreateContainer(
        agent_pb2.CreateContainerRequest(
            container_id=cid, exec_id=cid, OCI=container_spec(cid, ["sleep", "60"])
        ),
        timeout=60,
    )
    await agent.StartContainer(agent_pb2.StartContainerRequest(container_id=cid), timeout=60)
    try:
        eid = "seq"
        await agent.ExecProcess(
            agent_pb2.ExecProcessRequest(
                container_id=cid,
                exec_id=eid,
                process=oci_pb2.Process(
                    Args=["sh", "-c", f"seq 1 {COUNT}; seq 1 {COUNT}"], Env=["PATH=/bin"], Cwd="/"
                ),
            ),
            timeout=60,
        )
        out = await read_4mib_at_a_time(agent, cid, eid, stderr=False)
        assert (len(out), sha(out)) == (2 * len(EXPECTED), sha(EXPECTED + EXPECTED))
        status = await agent.WaitProcess(
            agent_pb2.WaitProcessRequest(container_id=cid, exec_id=eid), timeout=60
        )
        assert status.status == 0
    finally:
        await agent.RemoveContainer(
            agent_pb2.RemoveContainerRequest(container_id=cid, timeout=30), timeout=60
        )
