"""A CONNECT the guest cannot answer yet is held: while the guest's vsock is down, and while
the guest resets the request (nobody listens yet), until it accepts or the timeout passes."""

from __future__ import annotations

import asyncio
import random

import pytest
from vsock_guest import Rig, deadline, open_rig

from pykata.host.vsock import pending
from pykata.host.vsock.__main__ import parse_args
from pykata.host.vsock.packet import SHUTDOWN_SEND, Header, Op
from pykata.host.vsock.pending import DEFAULT_CONNECT_TIMEOUT


async def still_open(reader: asyncio.StreamReader, within: float = 0.05) -> None:
    """Nothing to read, and no EOF either (use only where no byte is due)."""
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), within)


async def client(rig: Rig, first_write: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(str(rig.uds))
    writer.write(first_write)
    await writer.drain()
    return reader, writer


async def request(rig: Rig) -> Header:
    """The next packet the guest sees, which must be a REQUEST."""
    ((hdr, _),) = await rig.driver.wait_packets()
    assert hdr.op == Op.REQUEST, hdr
    return hdr


async def guest_receives(rig: Rig, size: int) -> bytes:
    got = b""
    while len(got) < size:
        for hdr, payload in await rig.driver.wait_packets():
            assert hdr.op == Op.RW, hdr
            got += payload
    return got


async def quiet(rig: Rig, seconds: float) -> None:
    """The guest hears nothing for ``seconds``."""
    await asyncio.sleep(seconds)
    assert rig.driver.receive() == []


def accept(rig: Rig, req: Header) -> None:
    d = rig.driver
    d.send(d.packet(Op.RESPONSE, req.dst_port, req.src_port))


def reset(rig: Rig, req: Header) -> None:
    d = rig.driver
    d.send(d.packet(Op.RST, req.dst_port, req.src_port))


def assert_forgotten(rig: Rig) -> None:
    assert not rig.muxer.conns and not rig.muxer.streams and len(rig.muxer.held) == 0
    assert not rig.muxer._timers  # no per-request timer left either


@deadline(20)
async def test_connect_before_the_guest_is_up_waits_for_it() -> None:
    async with open_rig(start=False) as rig:
        reader, writer = await client(rig, b"CONNECT 5000\nearly bird")
        await still_open(reader, 0.3)
        assert len(rig.muxer.held) == 1 and not rig.muxer.conns
        writer.write(b", and more")  # still held: queued as well
        await rig.reconnect_frontend()  # the guest's vsock comes up
        req = await request(rig)
        assert req.dst_port == 5000
        accept(rig, req)
        assert await reader.readline() == f"OK {req.src_port}\n".encode()
        assert await guest_receives(rig, 20) == b"early bird, and more"
        d = rig.driver
        d.send(d.packet(Op.RW, 5000, req.src_port), b"hello host")
        assert await reader.readexactly(10) == b"hello host"
        assert len(rig.muxer.held) == 0 and list(rig.muxer.conns) == [(req.src_port, 5000)]
        writer.close()


@deadline(20)
async def test_guest_resets_until_it_listens_then_one_ok() -> None:
    async with open_rig() as rig:
        reader, writer = await client(rig, b"CONNECT 1024\n")
        ports = []
        loop = asyncio.get_running_loop()
        for _ in range(3):  # the agent is not listening yet
            req = await request(rig)
            ports.append(req.src_port)
            t0 = loop.time()
            reset(rig, req)
            await still_open(reader)
        req = await request(rig)
        assert loop.time() - t0 >= pending.RETRY_INTERVAL * 0.9  # a modest pause, not a spin
        ports.append(req.src_port)
        assert len(set(ports)) == 4  # every retry is a new dial from a fresh host port
        accept(rig, req)
        assert await reader.readline() == f"OK {req.src_port}\n".encode()
        await still_open(reader)  # one OK, nothing else
        writer.write(b"ping")
        assert await guest_receives(rig, 4) == b"ping"
        assert list(rig.muxer.conns) == [(req.src_port, 1024)] and len(rig.muxer.held) == 0
        writer.close()


@deadline(20)
async def test_bytes_sent_while_held_all_arrive_in_order() -> None:
    data = random.Random(1).randbytes(300_000)  # beyond the read-ahead limit
    async with open_rig() as rig:
        reader, writer = await client(rig, b"CONNECT 5000\n" + data[:1000])
        reset(rig, await request(rig))
        writer.write(data[1000:])
        writer.write_eof()
        reset(rig, await request(rig))
        req = await request(rig)
        d = rig.driver
        d.send(d.packet(Op.RESPONSE, 5000, req.src_port, buf_alloc=1 << 20))
        assert await reader.readline() == f"OK {req.src_port}\n".encode()
        got = bytearray()
        while True:
            packets = await d.wait_packets()
            got += b"".join(p for h, p in packets if h.op == Op.RW)
            shutdown = [h for h, _ in packets if h.op == Op.SHUTDOWN]
            if shutdown:
                assert shutdown[0].flags == SHUTDOWN_SEND  # the client's half-close, last
                break
            d.send(d.packet(Op.CREDIT_UPDATE, 5000, req.src_port, buf_alloc=1 << 20,
                            fwd_cnt=len(got)))  # fmt: skip
        assert got == data
        writer.close()


@deadline(20)
async def test_held_connect_is_closed_at_the_deadline() -> None:
    async with open_rig(connect_timeout=0.5) as rig:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        reader, writer = await client(rig, b"CONNECT 5000\n")
        requests = 0

        async def refuse_all() -> None:
            nonlocal requests
            while True:
                for hdr, _ in await rig.driver.wait_packets(within=10):
                    if hdr.op == Op.REQUEST:
                        requests += 1
                        reset(rig, hdr)

        refuser = asyncio.create_task(refuse_all())
        assert await reader.read() == b""  # closed, no OK
        elapsed = loop.time() - t0
        refuser.cancel()
        assert 0.45 <= elapsed < 2.0
        assert 2 <= requests <= 0.5 / pending.RETRY_INTERVAL + 1
        assert_forgotten(rig)
        writer.close()


@deadline(20)
async def test_deadline_while_the_guest_is_down_closes_the_client() -> None:
    async with open_rig(connect_timeout=0.3, start=False) as rig:
        reader, writer = await client(rig, b"CONNECT 5000\n")
        assert await reader.read() == b""
        assert_forgotten(rig)
        writer.close()
        await rig.reconnect_frontend()
        await quiet(rig, 0.2)  # nothing is asked for the client that gave up


@deadline(20)
async def test_deadline_with_a_request_in_flight_resets_it() -> None:
    async with open_rig(connect_timeout=0.3) as rig:
        reader, writer = await client(rig, b"CONNECT 5000\n")
        req = await request(rig)  # the guest never answers
        assert await reader.read() == b""
        ((rst, _),) = await rig.driver.wait_packets()
        assert (rst.op, rst.src_port, rst.dst_port) == (Op.RST, req.src_port, 5000)
        assert_forgotten(rig)
        writer.close()


@deadline(20)
async def test_a_silent_guest_is_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    from pykata.host.vsock import muxer

    monkeypatch.setattr(muxer, "CONNECT_TIMEOUT", 0.2)  # per request; the hold lasts longer
    async with open_rig() as rig:
        reader, writer = await client(rig, b"CONNECT 5000\n")
        first = await request(rig)
        ((rst, _),) = await rig.driver.wait_packets()
        assert (rst.op, rst.src_port) == (Op.RST, first.src_port)
        req = await request(rig)
        accept(rig, req)
        assert await reader.readline() == f"OK {req.src_port}\n".encode()
        writer.close()


@deadline(20)
async def test_client_hanging_up_while_the_guest_is_down_is_forgotten() -> None:
    async with open_rig(start=False) as rig:
        reader, writer = await client(rig, b"CONNECT 5000\nlost words")
        await still_open(reader)
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.05)
        assert_forgotten(rig)
        await rig.reconnect_frontend()
        await quiet(rig, 0.3)


@deadline(20)
async def test_client_hanging_up_between_retries_is_forgotten() -> None:
    async with open_rig() as rig:
        _, writer = await client(rig, b"CONNECT 5000\n")
        reset(rig, await request(rig))
        await rig.driver.sent()
        writer.transport.abort()
        await asyncio.sleep(0.05)
        assert_forgotten(rig)
        await quiet(rig, pending.RETRY_INTERVAL * 3)  # no retry for it


@deadline(20)
async def test_client_hanging_up_with_a_request_in_flight_resets_it() -> None:
    async with open_rig() as rig:
        _, writer = await client(rig, b"CONNECT 5000\n")
        req = await request(rig)
        writer.transport.abort()
        ((rst, _),) = await rig.driver.wait_packets()
        assert (rst.op, rst.src_port) == (Op.RST, req.src_port)
        assert_forgotten(rig)
        accept(rig, req)  # too late: the back-end resets it again, the client is gone
        ((rst, _),) = await rig.driver.wait_packets()
        assert rst.op == Op.RST
        await quiet(rig, pending.RETRY_INTERVAL * 3)
        assert_forgotten(rig)


@deadline(20)
async def test_held_connect_survives_a_device_reset() -> None:
    async with open_rig() as rig:
        reader, writer = await client(rig, b"CONNECT 5000\nkept")
        await request(rig)  # in flight when the front-end goes away
        rig.driver.close()
        await asyncio.sleep(0.05)
        assert not rig.muxer.guest_up and len(rig.muxer.held) == 1
        await still_open(reader)
        await rig.reconnect_frontend()
        req = await request(rig)
        accept(rig, req)
        assert await reader.readline() == f"OK {req.src_port}\n".encode()
        assert await guest_receives(rig, 4) == b"kept"
        writer.close()


@deadline(20)
async def test_timeout_zero_refuses_at_once() -> None:
    async with open_rig(connect_timeout=0, start=False) as rig:
        reader, writer = await client(rig, b"CONNECT 5000\n")
        assert await reader.read() == b""  # the guest is not up
        writer.close()
        await rig.reconnect_frontend()
        reader, writer = await client(rig, b"CONNECT 5000\n")
        reset(rig, await request(rig))
        assert await reader.read() == b""  # nobody listens
        assert_forgotten(rig)
        await quiet(rig, pending.RETRY_INTERVAL * 2)
        writer.close()


def test_connect_timeout_option() -> None:
    base = ["--socket", "v", "--uds-path", "u"]
    assert parse_args(base).connect_timeout == DEFAULT_CONNECT_TIMEOUT == 60
    assert parse_args([*base, "--connect-timeout", "0"]).connect_timeout == 0
    assert parse_args([*base, "--connect-timeout", "2.5"]).connect_timeout == 2.5
    with pytest.raises(SystemExit):
        parse_args([*base, "--connect-timeout", "-1"])
