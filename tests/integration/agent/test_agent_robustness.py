"""No request may crash the agent: random payloads, garbage bytes, oversized frames.

Only RPCs that cannot harm the host are fuzzed (no clock, CPU/memory hotplug or
DestroySandbox).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pykata.protocols import agent_pb2, health_pb2
from pykata.ttrpc import Client
from pykata.ttrpc.errors import TtrpcError, Unavailable

FUZZED = [
    "CreateSandbox",
    "UpdateEphemeralMounts",
    "GetMetrics",
    "CreateContainer",
    "StartContainer",
    "ExecProcess",
    "SignalProcess",
    "ReadStdout",
    "WriteStdin",
    "StatsContainer",
    "CopyFile",
    "GetGuestDetails",
    "GetVolumeStats",
    "TtyWinResize",
]


class RawPayload:
    """Stands in for a request message: the client sends these bytes as they are."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializeToString(self) -> bytes:
        return self.data


async def healthy(address: str) -> bool:
    async with await Client.connect(address, timeout=5.0) as client:
        resp = await client.call(
            "grpc.Health",
            "Check",
            health_pb2.CheckRequest(),
            health_pb2.HealthCheckResponse,
            timeout=5.0,
        )
    return resp.status == health_pb2.HealthCheckResponse.SERVING


async def fuzz(address: str, calls: list[tuple[int, bytes]]) -> list[str]:
    outcomes = []
    async with await Client.connect(address, timeout=5.0) as client:
        for index, payload in calls:
            method = FUZZED[index]
            try:
                await client.call(
                    "grpc.AgentService",
                    method,
                    RawPayload(payload),  # type: ignore[arg-type]
                    health_pb2.HealthCheckResponse,
                    timeout=5.0,
                )
                outcomes.append("ok")
            except Unavailable:
                raise
            except TtrpcError as exc:
                outcomes.append(exc.code.name)
            except Exception as exc:
                # A reply that does not decode as the stand-in response type is still a reply.
                outcomes.append(type(exc).__name__)
    return outcomes


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, len(FUZZED) - 1), st.binary(max_size=512)),
        min_size=1,
        max_size=8,
    )
)
def test_random_payloads_get_a_status(
    agent_address: str, agent_process: subprocess.Popen[bytes], calls: list[tuple[int, bytes]]
) -> None:
    outcomes = asyncio.run(fuzz(agent_address, calls))
    assert len(outcomes) == len(calls)
    assert agent_process.poll() is None
    assert asyncio.run(healthy(agent_address))


def raw_connect(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect("\0" + address.removeprefix("unix://@"))
    sock.settimeout(5)
    return sock


@given(st.binary(min_size=1, max_size=256))
@settings(max_examples=25, deadline=None)
def test_garbage_bytes_on_the_socket(agent_address: str, garbage: bytes) -> None:
    with raw_connect(agent_address) as sock:
        sock.sendall(garbage)
        sock.shutdown(socket.SHUT_WR)
        try:
            while sock.recv(4096):
                pass
        except TimeoutError:
            pass  # a partial frame: the agent keeps waiting for the rest; we hang up
    assert asyncio.run(healthy(agent_address))


def test_oversized_frame_is_refused_and_agent_serves(agent_address: str) -> None:
    with raw_connect(agent_address) as sock:
        length = 5 * 1024 * 1024
        sock.sendall(struct.pack(">IIBB", length, 1, 1, 0) + b"\0" * length)
        header = sock.recv(10, socket.MSG_WAITALL)
        size, stream, kind, _ = struct.unpack(">IIBB", header)
        body = sock.recv(size, socket.MSG_WAITALL)
    assert (stream, kind) == (1, 2)
    from pykata.protocols import ttrpc_pb2

    assert ttrpc_pb2.Response.FromString(body).status.code == 8  # RESOURCE_EXHAUSTED
    assert asyncio.run(healthy(agent_address))


async def test_many_concurrent_bad_requests(agent: Any, health: Any) -> None:
    bad = [
        agent.StatsContainer(agent_pb2.StatsContainerRequest(container_id="../x"))
        for _ in range(50)
    ]
    bad += [agent.CopyFile(agent_pb2.CopyFileRequest(path="/etc/shadow")) for _ in range(50)]
    results = await asyncio.gather(*bad, return_exceptions=True)
    assert all(isinstance(r, TtrpcError) and not isinstance(r, Unavailable) for r in results)
    resp = await health.Check(health_pb2.CheckRequest())
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("cid", ["", "../etc", "a/b", "-x", "x" * 300])
async def test_invalid_container_ids(agent: Any, cid: str) -> None:
    with pytest.raises(TtrpcError) as info:
        await agent.StatsContainer(agent_pb2.StatsContainerRequest(container_id=cid))
    assert info.value.code.name in ("INVALID_ARGUMENT", "NOT_FOUND")
