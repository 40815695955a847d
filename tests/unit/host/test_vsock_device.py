"""The vsock back-end (vhost-user session + muxer) driven by a test guest over a memfd."""

from __future__ import annotations

import array
import asyncio
import os
import socket
from collections.abc import AsyncIterator

import pytest
from vsock_guest import GUEST_CID, RX_DATA, Rig, deadline, open_rig

from pykata.host.vsock import muxer as muxer_module
from pykata.host.vsock import vhost_user as vu
from pykata.host.vsock.muxer import BUF_ALLOC, FIRST_LOCAL_PORT
from pykata.host.vsock.packet import HOST_CID, SHUTDOWN_BOTH, SHUTDOWN_SEND, Op


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with open_rig() as r:
        yield r


@pytest.fixture
async def refusing_rig() -> AsyncIterator[Rig]:
    """A back-end that refuses a CONNECT the guest cannot answer at once (no holding:
    tests/unit/host/test_vsock_hold.py covers that)."""
    async with open_rig(connect_timeout=0) as r:
        yield r


@deadline(20)
async def test_config_space_carries_the_guest_cid(rig: Rig) -> None:
    assert rig.driver.cid == GUEST_CID


@deadline(20)
async def test_features_offered(rig: Rig) -> None:
    features = vu.U64.unpack(await rig.driver.request(vu.Request.GET_FEATURES))[0]
    assert features == vu.F_VERSION_1 | vu.F_PROTOCOL_FEATURES
    proto = vu.U64.unpack(await rig.driver.request(vu.Request.GET_PROTOCOL_FEATURES))[0]
    assert proto == vu.PROTOCOL_F_CONFIG | vu.PROTOCOL_F_REPLY_ACK


@deadline(20)
async def test_hybrid_handshake_and_both_directions(rig: Rig) -> None:
    reader, writer, req = await rig.connected()
    assert (req.src_cid, req.dst_cid, req.dst_port) == (HOST_CID, GUEST_CID, 5000)
    assert req.src_port >= FIRST_LOCAL_PORT and req.buf_alloc == BUF_ALLOC
    payload = bytes(range(256)) * 40  # 10240 bytes: three rx buffers
    writer.write(payload)
    packets = await rig.driver.wait_packets(3)
    assert [h.op for h, _ in packets] == [Op.RW] * 3
    assert [len(p) for _, p in packets] == [RX_DATA, RX_DATA, 10240 - 2 * RX_DATA]
    assert b"".join(p for _, p in packets) == payload
    d = rig.driver
    d.send(d.packet(Op.RW, 5000, req.src_port), b"from the guest")
    assert await reader.readexactly(14) == b"from the guest"
    writer.close()


@deadline(20)
async def test_refused_connection_closes_the_client(refusing_rig: Rig) -> None:
    rig = refusing_rig
    reader, writer = await rig.client(6000)
    ((req, _),) = await rig.driver.wait_packets()
    rig.driver.send(rig.driver.packet(Op.RST, 6000, req.src_port))
    assert await reader.read() == b""
    assert not rig.muxer.conns
    writer.close()


@deadline(20)
async def test_bad_handshakes_are_closed(rig: Rig) -> None:
    for line in (b"CONNECT\n", b"CONNECT x\n", b"LISTEN 5\n", b"CONNECT 99999999999\n", b"A" * 80):
        reader, writer = await asyncio.open_unix_connection(str(rig.uds))
        writer.write(line)
        assert await reader.read() == b"", line
        writer.close()
    assert not rig.muxer.conns


@deadline(20)
async def test_host_to_guest_respects_guest_credit(rig: Rig) -> None:
    _, writer, req = await rig.connected(buf_alloc=8192)
    writer.write(b"x" * 20000)
    await writer.drain()
    first = await rig.driver.wait_packets(2)
    await asyncio.sleep(0.05)
    assert sum(len(p) for _, p in first) == 8192
    assert rig.driver.receive() == []  # out of credit: nothing more
    d = rig.driver
    d.send(d.packet(Op.CREDIT_UPDATE, 5000, req.src_port, buf_alloc=8192, fwd_cnt=8192))
    second = await rig.driver.wait_packets(2)
    assert sum(len(p) for _, p in second) == 8192
    d.send(d.packet(Op.CREDIT_UPDATE, 5000, req.src_port, buf_alloc=8192, fwd_cnt=16384))
    third = await rig.driver.wait_packets(1)
    assert sum(len(p) for _, p in third) == 20000 - 16384
    writer.close()


@deadline(20)
async def test_consumed_bytes_are_credited_back_to_the_guest(rig: Rig) -> None:
    reader, writer, req = await rig.connected(buf_alloc=64 << 10)
    d = rig.driver
    for _ in range(4):  # a full guest window (64 KiB) in four packets
        d.send(d.packet(Op.RW, 5000, req.src_port, buf_alloc=64 << 10), b"y" * (16 << 10))
        await asyncio.sleep(0)
    await reader.readexactly(64 << 10)
    packets = await d.wait_packets(1)
    updates = [h for h, _ in packets if h.op == Op.CREDIT_UPDATE]
    assert updates and updates[-1].fwd_cnt >= 16 << 10
    writer.close()


@deadline(20)
async def test_credit_request_is_answered(rig: Rig) -> None:
    _, writer, req = await rig.connected()
    rig.driver.send(rig.driver.packet(Op.CREDIT_REQUEST, 5000, req.src_port))
    ((hdr, _),) = await rig.driver.wait_packets()
    assert hdr.op == Op.CREDIT_UPDATE and hdr.buf_alloc == BUF_ALLOC and hdr.fwd_cnt == 0
    writer.close()


@deadline(20)
async def test_client_close_delivers_its_data_then_the_guest_sees_eof(rig: Rig) -> None:
    # A closed unix socket reads as EOF, like a half-close: the guest learns SHUTDOWN(SEND)
    # after the last byte, closes its socket (SHUTDOWN both) and gets the RST it waits for.
    _, writer, req = await rig.connected()
    writer.write(b"last words")
    writer.close()
    packets = await rig.driver.wait_packets(2)
    assert (packets[0][0].op, packets[0][1]) == (Op.RW, b"last words")
    assert (packets[1][0].op, packets[1][0].flags) == (Op.SHUTDOWN, SHUTDOWN_SEND)
    d = rig.driver
    d.send(d.packet(Op.SHUTDOWN, 5000, req.src_port, flags=SHUTDOWN_BOTH))
    ((hdr, _),) = await d.wait_packets()
    assert hdr.op == Op.RST
    assert not rig.muxer.conns


@deadline(20)
async def test_guest_data_to_a_vanished_client_resets_the_connection(rig: Rig) -> None:
    _, writer, req = await rig.connected()
    writer.transport.abort()
    ((hdr, _),) = await rig.driver.wait_packets()
    assert (hdr.op, hdr.flags) == (Op.SHUTDOWN, SHUTDOWN_SEND)
    d = rig.driver
    for _ in range(3):  # the first write may still land in the socket buffer
        d.send(d.packet(Op.RW, 5000, req.src_port), b"anyone there?")
        await asyncio.sleep(0.02)
    assert (Op.SHUTDOWN, SHUTDOWN_BOTH) in [(h.op, h.flags) for h, _ in d.receive()]
    d.send(d.packet(Op.RST, 5000, req.src_port))
    await asyncio.sleep(0.02)
    assert not rig.muxer.conns


@deadline(20)
async def test_client_half_close_sends_shutdown_send(rig: Rig) -> None:
    reader, writer, req = await rig.connected()
    writer.write_eof()
    ((hdr, _),) = await rig.driver.wait_packets()
    assert (hdr.op, hdr.flags) == (Op.SHUTDOWN, SHUTDOWN_SEND)
    rig.driver.send(rig.driver.packet(Op.RW, 5000, req.src_port), b"still talking")
    assert await reader.readexactly(13) == b"still talking"
    writer.close()


@deadline(20)
async def test_guest_close_ends_the_client_and_gets_rst(rig: Rig) -> None:
    reader, writer, req = await rig.connected()
    d = rig.driver
    d.send(d.packet(Op.RW, 5000, req.src_port), b"bye")
    d.send(d.packet(Op.SHUTDOWN, 5000, req.src_port, flags=SHUTDOWN_BOTH))
    assert await reader.read() == b"bye"
    ((hdr, _),) = await d.wait_packets()
    assert hdr.op == Op.RST
    assert not rig.muxer.conns
    writer.close()


@deadline(20)
async def test_guest_initiated_connection_reaches_uds_port_socket(rig: Rig) -> None:
    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def on_accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put((reader, writer))

    server = await asyncio.start_unix_server(on_accept, f"{rig.uds}_1025")
    d = rig.driver
    d.send(d.packet(Op.REQUEST, 40000, 1025))
    ((hdr, _),) = await d.wait_packets()
    assert (hdr.op, hdr.src_port, hdr.dst_port) == (Op.RESPONSE, 1025, 40000)
    reader, writer = await accepted.get()
    d.send(d.packet(Op.RW, 40000, 1025), b'{"msg":"log line"}\n')
    assert await reader.readline() == b'{"msg":"log line"}\n'
    writer.write(b"to the guest")
    ((hdr, payload),) = await d.wait_packets()
    assert (hdr.op, payload) == (Op.RW, b"to the guest")
    writer.close()
    server.close()


@deadline(20)
async def test_guest_connection_to_unserved_port_gets_rst(rig: Rig) -> None:
    d = rig.driver
    d.send(d.packet(Op.REQUEST, 40001, 1026))
    ((hdr, _),) = await d.wait_packets()
    assert (hdr.op, hdr.dst_port) == (Op.RST, 40001)
    assert not rig.muxer.conns


@deadline(20)
async def test_packets_for_unknown_connections_get_rst(rig: Rig) -> None:
    d = rig.driver
    d.send(d.packet(Op.RW, 40002, 5555), b"who?")
    ((hdr, _),) = await d.wait_packets()
    assert (hdr.op, hdr.src_port, hdr.dst_port) == (Op.RST, 5555, 40002)


@deadline(20)
async def test_packets_from_a_wrong_cid_are_dropped(rig: Rig) -> None:
    d = rig.driver
    pkt = d.packet(Op.REQUEST, 40003, 1025)
    pkt.src_cid = GUEST_CID + 1
    d.send(pkt)
    await asyncio.sleep(0.05)
    assert d.receive() == [] and not rig.muxer.conns


@deadline(20)
async def test_ring_stop_resets_connections_and_restart_works(rig: Rig) -> None:
    reader, writer, _ = await rig.connected()
    d = rig.driver
    bases = []
    for ring in d.rings:
        reply = await d.request(vu.Request.GET_VRING_BASE, vu.VRING_STATE.pack(ring.index, 0))
        bases.append(vu.VRING_STATE.unpack(reply)[1])
    assert await reader.read() == b""
    assert not rig.muxer.conns and not rig.muxer.guest_up
    writer.close()
    # The device comes back with the rings where the stop left them (QEMU passes the bases).
    d.avail_idx[0] = bases[0]
    await d.set_mem_table()
    for ring in d.rings:
        await d.setup_ring(ring)
    reader, writer, _ = await rig.connected()
    writer.write(b"after reset")
    ((_, payload),) = await d.wait_packets()
    assert payload == b"after reset"
    writer.close()


@deadline(20)
async def test_new_memory_table_resets_connections(rig: Rig) -> None:
    reader, writer, _ = await rig.connected()
    await rig.driver.set_mem_table()
    assert await reader.read() == b""
    assert not rig.muxer.guest_up
    writer.close()


@deadline(20)
async def test_frontend_reconnect_starts_afresh(rig: Rig) -> None:
    reader, writer, _ = await rig.connected()
    rig.driver.close()
    assert await reader.read() == b""
    writer.close()
    await rig.reconnect_frontend()
    reader, writer, _ = await rig.connected()
    writer.write(b"new front-end")
    ((_, payload),) = await rig.driver.wait_packets()
    assert payload == b"new front-end"
    writer.close()


@deadline(20)
async def test_connect_without_a_guest_is_closed(refusing_rig: Rig) -> None:
    rig = refusing_rig
    rig.driver.close()
    await asyncio.sleep(0.02)
    reader, writer = await rig.client(5000)
    assert await reader.read() == b""
    writer.close()
    await rig.reconnect_frontend()


@deadline(20)
async def test_bad_vring_size_ends_the_session(rig: Rig) -> None:
    d = rig.driver
    d.sock.sendmsg([vu.encode(vu.Request.SET_VRING_NUM, vu.VRING_STATE.pack(0, 100))])
    assert await asyncio.get_running_loop().sock_recv(d.sock, 16) == b""
    assert rig.listener.session is None


@deadline(20)
async def test_unknown_request_ends_the_session(rig: Rig) -> None:
    rig.driver.sock.sendmsg([vu.encode(99, b"")])
    assert await asyncio.get_running_loop().sock_recv(rig.driver.sock, 16) == b""


@deadline(20)
async def test_new_kick_fd_for_a_running_ring_is_watched(rig: Rig) -> None:
    d = rig.driver
    old = d.kick[1]
    d.kick[1] = os.eventfd(0, os.EFD_NONBLOCK)
    os.close(old)
    ack = await d.request(vu.Request.SET_VRING_KICK, vu.U64.pack(1), (d.kick[1],), reply=True)
    assert ack == vu.U64.pack(0)
    d.send(d.packet(Op.RW, 40004, 5556), b"kicked through the new fd")
    ((hdr, _),) = await d.wait_packets()
    assert hdr.op == Op.RST  # processed (and refused: no such connection)


@deadline(20)
async def test_rings_outside_guest_memory_end_the_session(rig: Rig) -> None:
    d = rig.driver
    await d.request(vu.Request.GET_VRING_BASE, vu.VRING_STATE.pack(0, 0))
    far = vu.VRING_ADDR.pack(0, 0, 1 << 60, 1 << 60, 1 << 60, 0)
    await d.request(vu.Request.SET_VRING_ADDR, far)
    d.sock.sendmsg(
        [vu.encode(vu.Request.SET_VRING_KICK, vu.U64.pack(0))],
        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [d.kick[0]]))],
    )
    assert await asyncio.get_running_loop().sock_recv(d.sock, 16) == b""
    assert rig.listener.session is None and not rig.muxer.guest_up


@deadline(20)
async def test_host_greeting_sent_at_accept_reaches_the_guest(rig: Rig) -> None:
    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello first")
        writer.write_eof()

    server = await asyncio.start_unix_server(greet, f"{rig.uds}_1027")
    d = rig.driver
    d.send(d.packet(Op.REQUEST, 40005, 1027))
    packets = await d.wait_packets(3)
    assert [(h.op, p) for h, p in packets] == [
        (Op.RESPONSE, b""),
        (Op.RW, b"hello first"),
        (Op.SHUTDOWN, b""),
    ]
    assert packets[2][0].flags == SHUTDOWN_SEND
    server.close()


@deadline(20)
async def test_connect_to_a_silent_guest_times_out(
    refusing_rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = refusing_rig
    monkeypatch.setattr(muxer_module, "CONNECT_TIMEOUT", 0.2)
    reader, writer = await rig.client(5000)
    ((req, _),) = await rig.driver.wait_packets()
    assert req.op == Op.REQUEST
    assert await reader.read() == b""  # closed without OK
    ((rst, _),) = await rig.driver.wait_packets()
    assert (rst.op, rst.src_port) == (Op.RST, req.src_port)
    assert not rig.muxer.conns
    writer.close()


@deadline(20)
async def test_answered_connect_is_not_timed_out(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(muxer_module, "CONNECT_TIMEOUT", 0.2)
    _, writer, _ = await rig.connected()
    await asyncio.sleep(0.4)
    writer.write(b"still here")
    ((_, payload),) = await rig.driver.wait_packets()
    assert payload == b"still here"
    writer.close()


@deadline(20)
async def test_empty_and_truncated_guest_packets_do_not_stall_the_ring(rig: Rig) -> None:
    reader, writer, req = await rig.connected()
    d = rig.driver
    d.send(d.packet(Op.RW, 5000, req.src_port))  # RW without payload
    # A chain too short for a header: dropped, but returned to the guest.
    ring = d.rings[1]
    head = (2 * d.avail_idx[1]) % ring.num
    d._offer(ring, head, [(d.tx_buffers[0], 10, False)])
    d.send(d.packet(Op.RW, 5000, req.src_port), b"after the odd ones")
    assert await reader.readexactly(18) == b"after the odd ones"
    assert len(d.used(1)) == 4  # RESPONSE, empty RW, short chain, RW: all given back
    writer.close()
