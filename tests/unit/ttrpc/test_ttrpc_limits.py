"""Bounded memory: the server-wide receive budget and the per-connection in-flight cap."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from raw_wire import frame, open_raw, read_response, request
from scripted_health import HEALTH, ScriptedHealth

from pykata.protocols import health_pb2
from pykata.ttrpc import Client, Code, Server
from pykata.ttrpc.framing import (
    HEADER,
    MAX_PAYLOAD,
    ByteBudget,
    FrameDecoder,
    Refused,
    encode_frame,
)

REQ = 1
DEFAULT_BUDGET = 64 << 20


def _check(script: str) -> bytes:
    body = health_pb2.CheckRequest(service=script).SerializeToString()
    return request("grpc.Health", "Check", body)


@pytest.fixture
async def server(sock_dir: Path, handler: ScriptedHealth) -> AsyncIterator[tuple[Server, str]]:
    srv = Server()
    srv.register(HEALTH, handler)
    address = f"unix://{sock_dir}/limits.sock"
    await srv.listen(address)
    async with srv:
        yield srv, address


async def _eventually(predicate: object, within: float = 5.0) -> None:
    assert callable(predicate)
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 (server state, no event to wait on)
            await asyncio.sleep(0.01)


# --- the decoder and its budget -------------------------------------------------------------


def test_a_frame_over_the_exempt_size_reserves_its_length_until_given_back() -> None:
    budget = ByteBudget(100, exempt=10)
    decoder = FrameDecoder(budget=budget)
    data = encode_frame(1, 1, b"x" * 40)
    assert decoder.feed(data[:20]) == []
    assert budget.in_use == 40
    assert decoder.feed(data[20:]) == [(1, 1, 0, b"x" * 40)]
    assert budget.in_use == 40  # now the receiver's to give back
    budget.release(40)
    assert decoder.feed(encode_frame(3, 1, b"small")) == [(3, 1, 0, b"small")]
    assert budget.in_use == 0


def test_a_frame_that_does_not_fit_is_skipped_unbuffered_and_reported() -> None:
    budget = ByteBudget(100, exempt=10)
    decoder = FrameDecoder(budget=budget)
    assert budget.reserve(70)
    data = encode_frame(5, 1, b"y" * 50) + encode_frame(7, 1, b"ok")
    # Reported at once, then skipped without being held.
    assert decoder.feed(data[:30]) == [(5, 1, 0, Refused.OVER_BUDGET)]
    assert decoder.held == 0
    assert budget.in_use == 70
    assert decoder.feed(data[30:]) == [(7, 1, 0, b"ok")]
    assert decoder.buffered == 0


def test_closing_mid_frame_gives_the_reservation_back() -> None:
    budget = ByteBudget(100, exempt=10)
    decoder = FrameDecoder(budget=budget)
    decoder.feed(encode_frame(1, 1, b"z" * 60)[:25])
    assert budget.in_use == 60
    decoder.close()
    assert budget.in_use == 0


def test_budgeted_decoding_is_the_same_at_every_split() -> None:
    frames = [(1, 1, 0, b"a" * 30), (3, 1, 0, b"b" * 5), (5, 1, 0, b"c" * 45), (7, 1, 0, b"")]
    data = b"".join(encode_frame(s, t, p, f) for s, t, f, p in frames)
    for cut1, cut2 in itertools.combinations(range(len(data) + 1), 2):
        budget = ByteBudget(75, exempt=10)  # both big frames may be held at once
        decoder = FrameDecoder(budget=budget)
        out = []
        for part in (data[:cut1], data[cut1:cut2], data[cut2:]):
            for f in decoder.feed(part):
                out.append(f)
                if isinstance(f[3], bytes) and len(f[3]) > 10:
                    budget.release(len(f[3]))
        assert out == frames, (cut1, cut2)
        assert budget.in_use == 0 and decoder.buffered == 0


# --- the server -----------------------------------------------------------------------------


async def test_partial_frames_on_200_connections_stay_within_the_budget(
    server: tuple[Server, str],
) -> None:
    srv, address = server
    header = HEADER.pack(MAX_PAYLOAD, 1, REQ, 0)
    body = b"\0" * (512 << 10)
    peers = [await open_raw(address) for _ in range(200)]
    try:
        for _, writer in peers:
            writer.write(header + body)
        await asyncio.gather(*(writer.drain() for _, writer in peers))

        async def answer(reader: asyncio.StreamReader) -> int | None:
            try:
                async with asyncio.timeout(3):
                    stream_id, response = await read_response(reader)
            except TimeoutError:
                return None
            assert stream_id == 1
            assert "server busy" in response.status.message
            return response.status.code

        codes = await asyncio.gather(*(answer(reader) for reader, _ in peers))
        accepted = DEFAULT_BUDGET // MAX_PAYLOAD
        assert codes.count(Code.RESOURCE_EXHAUSTED) == 200 - accepted
        assert codes.count(None) == accepted
        assert srv.buffered_bytes <= DEFAULT_BUDGET
        held = sum(conn._decoder.held for conn in srv._connections)
        assert held <= DEFAULT_BUDGET

        # A fresh client is still served, and small requests on a refused connection too.
        async with await Client.connect(address) as fresh:
            answer_ = await fresh.stub(HEALTH).Check(health_pb2.CheckRequest(), timeout=5)
            assert answer_.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        for _, writer in peers:
            writer.close()
        for _, writer in peers:
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    await _eventually(lambda: srv.buffered_bytes == 0)


async def test_a_refused_connection_keeps_serving_after_the_skipped_frame(
    server: tuple[Server, str],
) -> None:
    srv, address = server
    assert srv._budget.reserve(DEFAULT_BUDGET)  # someone else holds it all
    reader, writer = await open_raw(address)
    big = _check("x" * (64 << 10))
    writer.write(frame(1, REQ, big) + frame(3, REQ, _check("")))
    answers = dict([await read_response(reader), await read_response(reader)])
    assert answers[1].status.code == Code.RESOURCE_EXHAUSTED
    assert not answers[3].HasField("status")
    srv._budget.release(DEFAULT_BUDGET)
    writer.write(frame(5, REQ, big))
    stream_id, response = await read_response(reader)
    assert (stream_id, response.HasField("status")) == (5, False)
    await _eventually(lambda: srv.buffered_bytes == 0)
    writer.close()


async def test_a_big_request_holds_its_reservation_until_answered(
    server: tuple[Server, str], handler: ScriptedHealth
) -> None:
    srv, address = server
    async with await Client.connect(address) as client:
        call = asyncio.ensure_future(
            client.stub(HEALTH).Check(health_pb2.CheckRequest(service="sleep:0.3" + " " * 9000))
        )
        await _eventually(lambda: srv.buffered_bytes > 9000)
        assert (await call).status == health_pb2.HealthCheckResponse.SERVING
        assert srv.buffered_bytes == 0


async def test_requests_beyond_the_in_flight_cap_are_refused_and_the_connection_kept(
    server: tuple[Server, str],
) -> None:
    _, address = server
    reader, writer = await open_raw(address)
    slow = _check("sleep:2.5")
    writer.write(b"".join(frame(2 * i + 1, REQ, slow) for i in range(2000)))
    await writer.drain()
    refused = 0
    async with asyncio.timeout(2):
        while refused < 2000 - 1024:
            _, response = await read_response(reader)
            assert response.status.code == Code.RESOURCE_EXHAUSTED
            assert "too many requests in flight on this connection (limit 1024)" in (
                response.status.message
            )
            refused += 1
    # Still answering while full: a quick call is refused at once, not dropped.
    writer.write(frame(4001, REQ, _check("")))
    stream_id, response = await read_response(reader)
    assert (stream_id, response.status.code) == (4001, Code.RESOURCE_EXHAUSTED)
    # Once the slow calls are answered, the same connection serves again.
    for _ in range(1024):
        _, response = await read_response(reader)
        assert not response.HasField("status")
    writer.write(frame(4003, REQ, _check("")))
    stream_id, response = await read_response(reader)
    assert (stream_id, response.HasField("status")) == (4003, False)
    writer.close()


async def test_limits_are_constructor_parameters(sock_dir: Path, handler: ScriptedHealth) -> None:
    srv = Server(max_buffered_bytes=1 << 20, max_inflight_per_connection=2)
    srv.register(HEALTH, handler)
    address = f"unix://{sock_dir}/small.sock"
    await srv.listen(address)
    async with srv:
        reader, writer = await open_raw(address)
        writer.write(b"".join(frame(2 * i + 1, REQ, _check("block")) for i in range(3)))
        stream_id, response = await read_response(reader)
        assert (stream_id, response.status.code) == (5, Code.RESOURCE_EXHAUSTED)
        writer.write(frame(7, REQ, _check("y" * (2 << 20))))
        stream_id, response = await read_response(reader)
        assert (stream_id, response.status.code) == (7, Code.RESOURCE_EXHAUSTED)
        assert "1048576 bytes" in response.status.message
        writer.close()
    with pytest.raises(ValueError):
        Server(max_inflight_per_connection=0)
