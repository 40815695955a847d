"""Interop with containerd's own Go ttrpc (our peer program in tests/peers/go-ttrpc).

Both directions: the Go client calls our server, our client calls the Go server, plain
and over the hybrid vsock handshake. No root needed, except for the peer's first build
(it installs its Debian packages); the binary is cached.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from peers.go_ttrpc import PeerBuildError, peer_binary

from pykata.protocols import health_pb2
from pykata.ttrpc import Client, Server
from pykata.ttrpc.errors import Unimplemented

HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def peer() -> Path:
    """The Go peer binary, (re)built when its sources changed. A failed build fails."""
    try:
        return peer_binary()
    except PeerBuildError as e:
        error = str(e)
    pytest.fail(error, pytrace=False)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ttrpc-interop-") as d:
        yield Path(d)


class Health:
    async def Check(self, request: health_pb2.CheckRequest) -> health_pb2.HealthCheckResponse:
        return health_pb2.HealthCheckResponse(status=SERVING)

    async def Version(self, request: health_pb2.CheckRequest) -> health_pb2.VersionCheckResponse:
        return health_pb2.VersionCheckResponse(grpc_version="pykata", agent_version="interop")


@pytest.fixture
async def our_server(sock_dir: Path) -> AsyncIterator[str]:
    server = Server()
    server.register(HEALTH, Health())
    address = f"unix://{sock_dir}/py.sock"
    await server.listen(address)
    async with server:
        yield address


async def run_peer(peer: Path, *args: str) -> tuple[int, Any]:
    process = await asyncio.create_subprocess_exec(
        str(peer), *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    assert stdout, f"go-ttrpc-peer {args[0]} printed nothing: {stderr.decode()}"
    return process.returncode, json.loads(stdout.decode().splitlines()[-1])


async def test_go_client_calls_check_and_version(peer: Path, our_server: str) -> None:
    assert await run_peer(peer, "call", "--addr", our_server, "--method", "Check") == (
        0,
        {"status": "SERVING"},
    )
    rc, version = await run_peer(
        peer, "call", "--addr", our_server, "--method", "Version", "--timeout", "5s"
    )
    assert (rc, version) == (0, {"grpc_version": "pykata", "agent_version": "interop"})


async def test_go_client_sees_go_statuses(peer: Path, our_server: str) -> None:
    raw = ("raw", "--addr", our_server)
    rc, ok = await run_peer(
        peer, *raw, "--service", "grpc.Health", "--method", "Check", "--payload-hex", "0a0378797a"
    )
    assert (rc, ok["code"], ok["payload_hex"], ok["status_present"]) == (0, 0, "0801", False)
    rc, method = await run_peer(peer, *raw, "--service", "grpc.Health", "--method", "Nope")
    assert (rc, method["code"], method["message"]) == (1, 12, "method Nope")
    rc, service = await run_peer(peer, *raw, "--service", "grpc.Nope", "--method", "Check")
    assert (rc, service["code"], service["message"]) == (1, 12, "service grpc.Nope")
    rc, bad = await run_peer(
        peer, *raw, "--service", "grpc.Health", "--method", "Check", "--payload-hex", "ff"
    )
    assert (rc, bad["code"]) == (1, 13)
    assert bad["message"].startswith("ttrpc: error unmarshalling payload: ")


async def test_go_load_generator_multiplexes_on_our_server(peer: Path, our_server: str) -> None:
    # A conformance check (every concurrent call answered correctly), not a measurement.
    rc, result = await run_peer(
        peer, "bench", "--addr", our_server, "--concurrency", "16", "--duration", "300ms"
    )
    assert rc == 0
    assert result["errors"] == 0
    assert result["calls"] > 16


@pytest.fixture
async def go_server(
    peer: Path, sock_dir: Path, request: pytest.FixtureRequest
) -> AsyncIterator[str]:
    path = sock_dir / "go.sock"
    extra = ["--hvsock"] if getattr(request, "param", False) else []
    process = await asyncio.create_subprocess_exec(
        str(peer), "serve", "--addr", f"unix://{path}", *extra, stderr=subprocess.DEVNULL
    )
    try:
        yield str(path)
    finally:
        process.terminate()
        await process.wait()


async def test_our_client_calls_the_go_server(go_server: str) -> None:
    # connect() retries until the Go server has created its socket.
    async with await Client.connect(f"unix://{go_server}", timeout=10) as client:
        health: Any = client.stub(HEALTH)
        assert (await health.Check(health_pb2.CheckRequest(service="x"))).status == SERVING
        version = await health.Version(health_pb2.CheckRequest(), timeout=5)
        assert version.grpc_version == "go-ttrpc-peer"
        assert version.agent_version.startswith("containerd/ttrpc 1.1")
        with pytest.raises(Unimplemented, match="method Nope"):
            await client.call(
                "grpc.Health", "Nope", health_pb2.CheckRequest(), health_pb2.HealthCheckResponse
            )
        with pytest.raises(Unimplemented, match=r"service grpc\.Nope"):
            await client.call(
                "grpc.Nope", "Check", health_pb2.CheckRequest(), health_pb2.HealthCheckResponse
            )
        answers = await asyncio.gather(
            *(health.Check(health_pb2.CheckRequest(service=str(i))) for i in range(64))
        )
        assert {a.status for a in answers} == {SERVING}


@pytest.mark.parametrize("go_server", [True], indirect=True, ids=["hvsock"])
async def test_our_hvsock_dialer_against_the_go_mux(go_server: str) -> None:
    async with await Client.connect(f"hvsock://{go_server}:1024", timeout=10) as client:
        health: Any = client.stub(HEALTH)
        assert (await health.Check(health_pb2.CheckRequest())).status == SERVING
