"""A stalled frame's receive deadline and the cap on open connections."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from raw_wire import frame, open_raw, read_response, request
from scripted_health import HEALTH, ScriptedHealth

from pykata.protocols import health_pb2
from pykata.ttrpc import Client, Server
from pykata.ttrpc.framing import HEADER

REQ = 1
TIMEOUT = 0.4


def _check(script: str = "") -> bytes:
    body = health_pb2.CheckRequest(service=script).SerializeToString()
    return request("grpc.Health", "Check", body)


async def _eventually(predicate: Callable[[], bool], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 (server state, no event to wait on)
            await asyncio.sleep(0.01)


async def _closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    """The server closed the connection (EOF or reset) within ``within`` seconds."""
    try:
        async with asyncio.timeout(within):
            return await reader.read(1 << 16) == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False


async def _served(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sid: int) -> bool:
    writer.write(frame(sid, REQ, _check()))
    stream_id, response = await read_response(reader)
    return stream_id == sid and not response.HasField("status")


@contextlib.asynccontextmanager
async def serving(
    sock_dir: Path, handler: ScriptedHealth, **limits: Any
) -> AsyncIterator[tuple[Server, str]]:
    srv = Server(**limits)
    srv.register(HEALTH, handler)
    address = f"unix://{sock_dir}/conn.sock"
    await srv.listen(address)
    async with srv:
        yield srv, address


# --- the receive deadline of a partly received frame ----------------------------------------


async def test_a_stalled_frame_closes_its_connection_and_gives_its_reservation_back(
    sock_dir: Path, handler: ScriptedHealth
) -> None:
    async with serving(sock_dir, handler, frame_timeout=TIMEOUT) as (srv, address):
        other_reader, other_writer = await open_raw(address)
        reader, writer = await open_raw(address)
        writer.write(HEADER.pack(1 << 20, 1, REQ, 0) + b"\0" * 1000)  # then nothing
        await _eventually(lambda: srv.buffered_bytes == 1 << 20)
        assert not await _closed_by_server(reader, within=TIMEOUT / 2)
        assert await _closed_by_server(reader, within=TIMEOUT + 3)
        await _eventually(lambda: srv.buffered_bytes == 0)
        assert len(srv._connections) == 1
        # The other connection, idle between frames all along, is still served.
        assert await _served(other_reader, other_writer, 1)
        writer.close()
        other_writer.close()


async def test_a_trickled_frame_gets_no_more_time_than_a_stalled_one(
    sock_dir: Path, handler: ScriptedHealth
) -> None:
    async with serving(sock_dir, handler, frame_timeout=TIMEOUT) as (srv, address):
        reader, writer = await open_raw(address)
        writer.write(HEADER.pack(64 << 10, 1, REQ, 0))
        closed = False
        async with asyncio.timeout(TIMEOUT + 3):
            while not closed:
                with contextlib.suppress(ConnectionError):
                    writer.write(b"\0" * 10)
                closed = await _closed_by_server(reader, within=0.05)
        await _eventually(lambda: srv.buffered_bytes == 0)
        writer.close()


async def test_frames_each_complete_in_time_keep_the_connection_past_the_deadline(
    sock_dir: Path, handler: ScriptedHealth
) -> None:
    async with serving(sock_dir, handler, frame_timeout=1.0) as (_, address):
        reader, writer = await open_raw(address)
        for i in range(6):  # 6 frames, each split, 0.3 s apart: 1.8 s in all
            data = frame(2 * i + 1, REQ, _check())
            writer.write(data[:7])
            await asyncio.sleep(0.3)
            writer.write(data[7:])
            stream_id, response = await read_response(reader)
            assert (stream_id, response.HasField("status")) == (2 * i + 1, False)
        writer.close()


async def test_the_receive_deadline_defaults_to_30_s_and_can_be_turned_off(
    sock_dir: Path, handler: ScriptedHealth
) -> None:
    assert Server()._frame_timeout == 30.0
    with pytest.raises(ValueError):
        Server(frame_timeout=0)
    async with serving(sock_dir, handler, frame_timeout=None) as (_, address):
        reader, writer = await open_raw(address)
        writer.write(HEADER.pack(1 << 20, 1, REQ, 0))
        assert not await _closed_by_server(reader, within=0.3)
        writer.close()


# --- the cap on connections -----------------------------------------------------------------


async def test_a_connection_beyond_the_cap_is_closed_at_once_and_the_others_served(
    sock_dir: Path, handler: ScriptedHealth
) -> None:
    async with serving(sock_dir, handler, max_connections=3) as (srv, address):
        peers = [await open_raw(address) for _ in range(3)]
        for reader, writer in peers:
            assert await _served(reader, writer, 1)
        extra_reader, extra_writer = await open_raw(address)
        assert await _closed_by_server(extra_reader, within=3)
        extra_writer.close()
        assert len(srv._connections) == 3
        for reader, writer in peers:
            assert await _served(reader, writer, 3)
        # One closes: a new connection is taken again.
        peers[0][1].close()
        await _eventually(lambda: len(srv._connections) == 2)
        async with await Client.connect(address) as client:
            answer = await client.stub(HEALTH).Check(health_pb2.CheckRequest(), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        for _, writer in peers[1:]:
            writer.close()


async def test_connections_are_capped_at_256_by_default(
    sock_dir: Path, handler: ScriptedHealth
) -> None:
    async with serving(sock_dir, handler) as (srv, address):
        peers = [await open_raw(address) for _ in range(256)]
        await _eventually(lambda: len(srv._connections) == 256)
        extra_reader, extra_writer = await open_raw(address)
        assert await _closed_by_server(extra_reader, within=3)
        last_reader, last_writer = peers[-1]
        assert await _served(last_reader, last_writer, 1)
        for _, writer in [*peers, (extra_reader, extra_writer)]:
            writer.close()
    with pytest.raises(ValueError):
        Server(max_connections=0)
