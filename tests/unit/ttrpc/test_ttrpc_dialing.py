"""Client connections: retry until the server appears, hybrid vsock, lost connections."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from scripted_health import HEALTH, ScriptedHealth

from pykata.protocols import health_pb2, ttrpc_pb2
from pykata.ttrpc import Client, Server, dialing
from pykata.ttrpc.errors import DeadlineExceeded, Unavailable
from pykata.ttrpc.framing import HEADER, HEADER_SIZE

CHECK = health_pb2.CheckRequest()


@contextlib.asynccontextmanager
async def hvsock_mux(
    path: Path, target: str, reply: bytes = b"OK 1073741824\n"
) -> AsyncIterator[list[bytes]]:
    """A hybrid vsock mux like Firecracker's: reads "CONNECT <port>\\n", answers reply and,
    if that starts with OK, relays bytes to the unix socket target. Yields the CONNECT
    lines it received."""
    lines: list[bytes] = []

    async def relay(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
        dst.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            lines.append(await reader.readline())
            if not reply:
                await reader.read()  # silent until the client gives up
            elif reply.startswith(b"OK"):
                writer.write(reply)
                up_reader, up_writer = await asyncio.open_unix_connection(target)
                await asyncio.gather(relay(reader, up_writer), relay(up_reader, writer))
            else:
                writer.write(reply)
        finally:
            writer.close()

    mux = await asyncio.start_unix_server(serve, path)
    async with mux:
        yield lines


async def test_hvsock_handshake_then_ttrpc(sock_dir: Path, server_address: str) -> None:
    mux_path = sock_dir / "kata.hvsock"
    async with hvsock_mux(mux_path, server_address.removeprefix("unix://")) as lines:
        async with await Client.connect(f"hvsock://{mux_path}:1024", timeout=5) as client:
            assert (await client.stub(HEALTH).Check(CHECK)).status == 1
        assert lines == [b"CONNECT 1024\n"]


async def test_hvsock_refusal_is_retried_until_timeout(sock_dir: Path, server_address: str) -> None:
    mux_path = sock_dir / "kata.hvsock"
    target = server_address.removeprefix("unix://")
    async with hvsock_mux(mux_path, target, reply=b"FAILURE\n") as lines:
        with pytest.raises(Unavailable, match="refused"):
            await Client.connect(f"hvsock://{mux_path}:1024", timeout=0.5)
        assert len(lines) > 1


async def test_hvsock_handshake_timeout(
    sock_dir: Path, server_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dialing, "HANDSHAKE_TIMEOUT", 0.1)
    mux_path = sock_dir / "kata.hvsock"
    target = server_address.removeprefix("unix://")
    async with hvsock_mux(mux_path, target, reply=b"") as lines:
        with pytest.raises(Unavailable, match=r"no reply to CONNECT 1024 within 0\.1s"):
            await Client.connect(f"hvsock://{mux_path}:1024", timeout=0.35)
        assert len(lines) >= 2


async def test_connect_retries_until_the_server_listens(
    sock_dir: Path, handler: ScriptedHealth
) -> None:
    address = f"unix://{sock_dir}/late.sock"
    connecting = asyncio.create_task(Client.connect(address, timeout=10))
    await asyncio.sleep(0.3)
    assert not connecting.done()
    server = Server()
    server.register(HEALTH, handler)
    await server.listen(address)
    async with server, await connecting as client:
        assert (await client.stub(HEALTH).Check(CHECK)).status == 1


async def test_connect_gives_up_with_unavailable(sock_dir: Path) -> None:
    with pytest.raises(Unavailable, match="No such file"):
        await Client.connect(f"unix://{sock_dir}/never.sock", timeout=0.2)


def vsock_available() -> bool:
    try:
        socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()
    except OSError:
        return False
    return True


@pytest.mark.skipif(not vsock_available(), reason="this kernel has no AF_VSOCK")
async def test_vsock_listener_and_unreachable_dial(handler: ScriptedHealth) -> None:
    server = Server()
    server.register(HEALTH, handler)
    # The host has no vsock loopback, so only binding VMADDR_CID_ANY can be shown here;
    # the VM tests exercise real guest connections.
    async with server:
        await server.listen("vsock://-1:0")
    with pytest.raises(Unavailable, match="vsock://3:1024"):
        await Client.connect("vsock://3:1024", timeout=0.2)


class OneRequestServer:
    """Reads one request, records it, then closes the connection or stays silent."""

    def __init__(self, close: bool) -> None:
        self.close = close
        self.requests: list[ttrpc_pb2.Request] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        length, _, _, _ = HEADER.unpack(await reader.readexactly(HEADER_SIZE))
        self.requests.append(ttrpc_pb2.Request.FromString(await reader.readexactly(length)))
        if self.close:
            writer.close()
        else:
            await reader.read()


async def test_client_deadline_is_local_and_on_the_wire(sock_dir: Path) -> None:
    path = sock_dir / "silent.sock"
    silent = OneRequestServer(close=False)
    async with (
        await asyncio.start_unix_server(silent.serve, path),
        await Client.connect(f"unix://{path}") as client,
    ):
        with pytest.raises(DeadlineExceeded, match=r"within 0\.2s"):
            await client.stub(HEALTH).Check(CHECK, timeout=0.2)
    (sent,) = silent.requests
    assert (sent.service, sent.method, sent.timeout_nano) == ("grpc.Health", "Check", 200_000_000)


async def test_connection_loss_fails_pending_calls(sock_dir: Path) -> None:
    path = sock_dir / "closing.sock"
    async with await asyncio.start_unix_server(OneRequestServer(close=True).serve, path):
        client = await Client.connect(f"unix://{path}")
        calls = [asyncio.create_task(client.stub(HEALTH).Check(CHECK)) for _ in range(3)]
        for call in calls:
            with pytest.raises(Unavailable, match="connection closed"):
                await call
        with pytest.raises(Unavailable):
            await client.stub(HEALTH).Check(CHECK)
        await client.close()
