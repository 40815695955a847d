"""Wire formats of the vsock back-end: virtio-vsock headers, vhost-user messages, vrings."""

from __future__ import annotations

import mmap
import os
import socket
import struct
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pykata.host.vsock import vhost_user as vu
from pykata.host.vsock.muxer import write_packet
from pykata.host.vsock.packet import HEADER_SIZE, Header, Op
from pykata.host.vsock.virtqueue import (
    GuestMemory,
    GuestMemoryError,
    MemoryRegion,
    RingAddresses,
    Virtqueue,
)

u16, u32, u64 = (st.integers(0, 2**n - 1) for n in (16, 32, 64))


@given(st.tuples(u64, u64, u32, u32, u32, u16, u16, u32, u32, u32))
def test_header_round_trip(fields: tuple[int, ...]) -> None:
    hdr = Header(*fields)
    raw = hdr.pack()
    assert len(raw) == HEADER_SIZE == 44
    assert Header.unpack_from(raw) == hdr
    assert Header.unpack_from(b"pad" + raw, 3) == hdr


def test_header_layout_is_little_endian_virtio() -> None:
    raw = Header(3, 2, 1024, 5000, 7, 1, Op.RW, 0, 4096, 9).pack()
    assert raw[:8] == (3).to_bytes(8, "little") and raw[16:20] == (1024).to_bytes(4, "little")
    assert raw[28:30] == b"\x01\x00" and raw[30:32] == b"\x05\x00"


def test_short_header_is_rejected() -> None:
    with pytest.raises(ValueError, match="44 bytes"):
        Header.unpack_from(bytes(43))


def test_message_encoding() -> None:
    assert vu.encode(vu.Request.GET_FEATURES) == struct.pack("<III", 1, 1, 0)
    reply = vu.encode_reply(vu.Request.GET_FEATURES, vu.U64.pack(5))
    assert reply == struct.pack("<IIIQ", 1, 1 | 4, 8, 5)


@given(st.lists(st.tuples(u64, u64, u64, u64), max_size=8))
def test_mem_table_round_trip(regions: list[tuple[int, int, int, int]]) -> None:
    table = [MemoryRegion(*r) for r in regions]
    assert vu.decode_mem_table(vu.encode_mem_table(table)) == table


def test_truncated_mem_table_is_a_protocol_error() -> None:
    payload = vu.encode_mem_table([MemoryRegion(0, 4096, 0, 0)] * 2)
    with pytest.raises(vu.ProtocolError, match="2 regions"):
        vu.decode_mem_table(payload[:-1])


def test_recv_message_collects_fds_and_detects_hangup() -> None:
    a, b = socket.socketpair()
    efd = os.eventfd(0)
    try:
        a.sendmsg(
            [vu.encode(vu.Request.SET_VRING_KICK, vu.U64.pack(1))],
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", efd))],
        )
        msg = vu.recv_message(b)
        assert msg is not None
        assert (msg.request, vu.U64.unpack(msg.payload)[0], len(msg.fds)) == (12, 1, 1)
        os.close(msg.fds[0])
        a.sendall(vu.HEADER.pack(1, 1, vu.MAX_PAYLOAD + 1))
        with pytest.raises(vu.ProtocolError, match="too large"):
            vu.recv_message(b)
        a.close()
        assert vu.recv_message(b) is None
    finally:
        os.close(efd)
        b.close()


# A split ring laid out by hand in a memfd that stands for guest RAM.
RAM = 1 << 16
USER = 0x7000_0000  # the front-end's address of that RAM
DESC, AVAIL, USED = 0x0, 0x1000, 0x2000


@pytest.fixture
def ram() -> Iterator[tuple[GuestMemory, memoryview]]:
    fd = os.memfd_create("ram")
    os.ftruncate(fd, RAM)
    mem = GuestMemory([(MemoryRegion(0, RAM, USER, 0), fd)])
    view = memoryview(mmap.mmap(fd, RAM))
    os.close(fd)
    yield mem, view
    view.release()
    mem.close()


def make_queue(mem: GuestMemory, num: int = 8) -> Virtqueue:
    q = Virtqueue(0)
    q.num = num
    q.addresses = RingAddresses(USER + DESC, USER + USED, USER + AVAIL)
    q.start(mem)
    return q


def put_desc(view: memoryview, i: int, addr: int, length: int, flags: int, nxt: int = 0) -> None:
    struct.pack_into("<QIHH", view, DESC + 16 * i, addr, length, flags, nxt)


def make_avail(view: memoryview, *heads: int) -> None:
    for n, head in enumerate(heads):
        struct.pack_into("<H", view, AVAIL + 4 + 2 * n, head)
    struct.pack_into("<H", view, AVAIL + 2, len(heads))


def test_pop_walks_chains_and_push_fills_the_used_ring(ram: tuple[GuestMemory, memoryview]) -> None:
    mem, view = ram
    q = make_queue(mem)
    put_desc(view, 0, 0x4000, 44, 1, 1)  # readable header ...
    put_desc(view, 1, 0x5000, 100, 0)  # ... then readable data
    put_desc(view, 2, 0x6000, 4096, 2)  # one writable buffer
    make_avail(view, 0, 2)
    view[0x5000:0x5005] = b"hello"
    first = q.pop(mem)
    assert first is not None and first.head == 0
    assert [len(b) for b in first.readable] == [44, 100] and not first.writable
    assert bytes(first.readable[1][:5]) == b"hello"
    second = q.pop(mem)
    assert second is not None and second.head == 2 and second.writable_size() == 4096
    second.writable[0][:3] = b"abc"
    assert q.pop(mem) is None
    q.push(first, 0)
    q.push(second, 3)
    assert bytes(view[0x6000:0x6003]) == b"abc"
    assert struct.unpack_from("<HHIIII", view, USED) == (0, 2, 0, 0, 2, 3)
    call = os.eventfd(0, os.EFD_NONBLOCK)
    q.call_fd = call
    q.notify()
    assert os.eventfd_read(call) == 1
    q.notify()  # nothing new pushed: no second interrupt
    with pytest.raises(BlockingIOError):
        os.eventfd_read(call)
    q.close_fds()


def test_interrupts_suppressed_when_the_guest_asks(ram: tuple[GuestMemory, memoryview]) -> None:
    mem, view = ram
    q = make_queue(mem)
    put_desc(view, 0, 0x4000, 16, 2)
    make_avail(view, 0)
    struct.pack_into("<H", view, AVAIL, 1)  # VRING_AVAIL_F_NO_INTERRUPT
    chain = q.pop(mem)
    assert chain is not None
    q.push(chain, 0)
    q.call_fd = os.eventfd(0, os.EFD_NONBLOCK)
    q.notify()
    with pytest.raises(BlockingIOError):
        os.eventfd_read(q.call_fd)
    q.close_fds()


def test_looping_chain_is_an_error(ram: tuple[GuestMemory, memoryview]) -> None:
    mem, view = ram
    q = make_queue(mem)
    put_desc(view, 0, 0x4000, 16, 1, 1)
    put_desc(view, 1, 0x4000, 16, 1, 0)
    make_avail(view, 0)
    with pytest.raises(GuestMemoryError, match="loops"):
        q.pop(mem)


def test_buffer_outside_guest_memory_is_an_error(ram: tuple[GuestMemory, memoryview]) -> None:
    mem, view = ram
    q = make_queue(mem)
    put_desc(view, 0, RAM - 8, 16, 0)
    make_avail(view, 0)
    with pytest.raises(GuestMemoryError, match="outside guest memory"):
        q.pop(mem)


def test_descriptor_index_out_of_range_is_an_error(ram: tuple[GuestMemory, memoryview]) -> None:
    mem, view = ram
    q = make_queue(mem)
    make_avail(view, 9)
    with pytest.raises(GuestMemoryError, match="out of range"):
        q.pop(mem)


def test_rings_outside_memory_cannot_start(ram: tuple[GuestMemory, memoryview]) -> None:
    mem, _ = ram
    q = Virtqueue(1)
    q.num = 8
    q.addresses = RingAddresses(USER + RAM, USER, USER)
    with pytest.raises(GuestMemoryError):
        q.start(mem)


@pytest.mark.parametrize(
    "layout",
    [[44, 4096], [44 + 4096], [20, 24, 100, 4000]],  # Linux 6.1, Linux 6.2+, anything else
)
def test_write_packet_fills_any_rx_buffer_layout(layout: list[int]) -> None:
    mem = memoryview(bytearray(sum(layout)))
    bufs, offset = [], 0
    for size in layout:
        bufs.append(mem[offset : offset + size])
        offset += size
    header = Header(2, 3, 1 << 30, 5000, 3000, 1, Op.RW, 0, 1 << 20, 7).pack()
    payload = memoryview(bytes(range(256)) * 11 + bytes(184))
    assert write_packet(bufs, header, payload) == 44 + 3000
    assert bytes(mem[:44]) == header and bytes(mem[44 : 44 + 3000]) == bytes(payload)
