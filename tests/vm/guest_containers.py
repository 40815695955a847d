"""Running one container to its end in a booted guest, through a kata-agent-ctl session."""

from __future__ import annotations

from collections.abc import Sequence

from pykata.host.ctl.session import Session
from pykata.protocols import agent_pb2, oci_pb2


async def run_to_exit(
    session: Session,
    cid: str,
    spec: oci_pb2.Spec,
    *,
    storages: Sequence[agent_pb2.Storage] = (),
    devices: Sequence[agent_pb2.Device] = (),
) -> tuple[int, str]:
    """Create, start, read all output of, wait for and remove container ``cid``: its exit
    status and output."""
    await session.agent_empty(
        "CreateContainer",
        agent_pb2.CreateContainerRequest(
            container_id=cid, exec_id=cid, OCI=spec, storages=storages, devices=devices
        ),
    )
    await session.agent_empty("StartContainer", agent_pb2.StartContainerRequest(container_id=cid))
    output = b""
    while True:
        reply = await session.agent(
            "ReadStdout",
            agent_pb2.ReadStreamRequest(container_id=cid, exec_id=cid, len=65536),
            agent_pb2.ReadStreamResponse,
        )
        if not reply.data:
            break
        output += reply.data
    status = await session.agent(
        "WaitProcess",
        agent_pb2.WaitProcessRequest(container_id=cid, exec_id=cid),
        agent_pb2.WaitProcessResponse,
    )
    await session.agent_empty("RemoveContainer", agent_pb2.RemoveContainerRequest(container_id=cid))
    return status.status, output.decode(errors="replace")
