"""A guest-side virtio-vsock driver over a memfd, for testing the back-end without QEMU.

It plays QEMU's part on the vhost-user socket (features, memory table as a memfd, vrings,
kick/call eventfds) and the guest kernel's part on the rings (rx buffers laid out like
Linux 6.1: a 44-byte header descriptor then a 4 KiB data descriptor; tx packets the same).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import functools
import mmap
import os
import socket
import struct
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pykata.host.vsock import vhost_user as vu
from pykata.host.vsock.muxer import HostStream, VsockMuxer
from pykata.host.vsock.packet import HEADER_SIZE, HOST_CID, TYPE_STREAM, Header, Op
from pykata.host.vsock.pending import DEFAULT_CONNECT_TIMEOUT

AsyncTest = Callable[..., Awaitable[None]]
MEM_SIZE = 2 << 20
TX_SLOT = 64 << 10  # the largest packet the test guest sends
USER_BASE = 0x7F00_0000_0000  # where "QEMU" pretends to have mapped guest RAM
QUEUE_SIZE = 16
RX_DATA = 4096
DESC = struct.Struct("<QIHH")
U16 = struct.Struct("<H")
USED_ELEM = struct.Struct("<II")


@dataclass
class Ring:
    index: int
    base: int  # guest address of the descriptor table
    num: int = QUEUE_SIZE

    @property
    def desc(self) -> int:
        return self.base

    @property
    def avail(self) -> int:
        return self.base + 16 * self.num

    @property
    def used(self) -> int:
        return (self.avail + 6 + 2 * self.num + 4095) & ~4095


class GuestDriver:
    """Front-end and guest in one; ``cid`` is what GET_CONFIG must report."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.memfd = os.memfd_create("guest-ram")
        os.ftruncate(self.memfd, MEM_SIZE)
        self._map = mmap.mmap(self.memfd, MEM_SIZE)
        self.mem = memoryview(self._map)
        self.rings = [Ring(0, 0x0000), Ring(1, 0x4000)]
        self.kick = [os.eventfd(0, os.EFD_NONBLOCK) for _ in self.rings]
        self.call = [os.eventfd(0, os.EFD_NONBLOCK) for _ in self.rings]
        self.avail_idx = [0, 0]
        self.used_seen = [0, 0]
        self.buffers: dict[int, int] = {}  # rx head descriptor -> guest address of its buffer
        self.tx_buffers: dict[int, int] = {}
        self._next_buf = 0x10000
        self.cid = 0

    # vhost-user front-end

    async def request(
        self, req: vu.Request, payload: bytes = b"", fds: tuple[int, ...] = (), reply: bool = False
    ) -> bytes:
        flags = vu.VERSION | (vu.FLAG_NEED_REPLY if reply else 0)
        data = vu.encode(req, payload, flags)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        self.sock.sendmsg([data], anc)
        if req in (vu.Request.GET_FEATURES, vu.Request.GET_PROTOCOL_FEATURES,
                   vu.Request.GET_CONFIG, vu.Request.GET_VRING_BASE) or reply:  # fmt: skip
            return await self.read_reply(req)
        return b""

    async def read_reply(self, req: int) -> bytes:
        loop = asyncio.get_running_loop()
        head = await loop.sock_recv(self.sock, vu.HEADER.size)
        request, flags, size = vu.HEADER.unpack(head)
        assert request == req and flags & vu.FLAG_REPLY, (request, flags)
        return await loop.sock_recv(self.sock, size) if size else b""

    async def start(self) -> None:
        """What QEMU does when the guest driver sets DRIVER_OK."""
        features = vu.U64.unpack(await self.request(vu.Request.GET_FEATURES))[0]
        await self.request(vu.Request.SET_FEATURES, vu.U64.pack(features))
        proto = vu.U64.unpack(await self.request(vu.Request.GET_PROTOCOL_FEATURES))[0]
        await self.request(vu.Request.SET_PROTOCOL_FEATURES, vu.U64.pack(proto))
        await self.request(vu.Request.SET_OWNER)
        config = await self.request(vu.Request.GET_CONFIG, vu.CONFIG_HEAD.pack(0, 8, 0) + bytes(8))
        self.cid = struct.unpack_from("<Q", config, vu.CONFIG_HEAD.size)[0]
        await self.set_mem_table()
        for ring in self.rings:
            await self.setup_ring(ring)
        self.post_rx(QUEUE_SIZE // 2)

    async def set_mem_table(self) -> None:
        region = vu.MemoryRegion(0, MEM_SIZE, USER_BASE, 0)
        payload = vu.encode_mem_table([region])
        assert await self.request(vu.Request.SET_MEM_TABLE, payload, (self.memfd,), reply=True) == (
            vu.U64.pack(0)
        )

    async def setup_ring(self, ring: Ring) -> None:
        i = ring.index
        await self.request(vu.Request.SET_VRING_NUM, vu.VRING_STATE.pack(i, ring.num))
        addr = vu.VRING_ADDR.pack(
            i, 0, USER_BASE + ring.desc, USER_BASE + ring.used, USER_BASE + ring.avail, 0
        )
        await self.request(vu.Request.SET_VRING_ADDR, addr)
        await self.request(vu.Request.SET_VRING_BASE, vu.VRING_STATE.pack(i, self.avail_idx[i]))
        await self.request(vu.Request.SET_VRING_CALL, vu.U64.pack(i), (self.call[i],))
        # REPLY_ACK: once acknowledged, the back-end has started the ring.
        ack = await self.request(vu.Request.SET_VRING_KICK, vu.U64.pack(i), (self.kick[i],), True)
        assert ack == vu.U64.pack(0)

    # guest ring handling

    def _alloc(self, size: int) -> int:
        addr = self._next_buf
        self._next_buf += (size + 63) & ~63
        assert self._next_buf <= MEM_SIZE, "test guest memory exhausted"
        return addr

    def _offer(self, ring: Ring, head: int, parts: list[tuple[int, int, bool]]) -> None:
        """Write a chain of ``(addr, len, writable)`` starting at descriptor ``head``."""
        for n, (addr, length, writable) in enumerate(parts):
            last = n == len(parts) - 1
            flags = (0 if last else 1) | (2 if writable else 0)
            DESC.pack_into(self.mem, ring.desc + 16 * (head + n), addr, length, flags, head + n + 1)
        i = ring.index
        slot = ring.avail + 4 + 2 * (self.avail_idx[i] % ring.num)
        U16.pack_into(self.mem, slot, head)
        self.avail_idx[i] = (self.avail_idx[i] + 1) & 0xFFFF
        U16.pack_into(self.mem, ring.avail + 2, self.avail_idx[i])
        os.eventfd_write(self.kick[i], 1)

    def post_rx(self, count: int) -> None:
        """Offer ``count`` two-descriptor rx buffers (heads 0, 2, 4, ...)."""
        ring = self.rings[0]
        for _ in range(count):
            head = (2 * self.avail_idx[0]) % ring.num
            if head not in self.buffers:
                self.buffers[head] = self._alloc(HEADER_SIZE + RX_DATA)
            addr = self.buffers[head]
            parts = [(addr, HEADER_SIZE, True), (addr + HEADER_SIZE, RX_DATA, True)]
            self._offer(ring, head, parts)

    def send(self, hdr: Header, payload: bytes = b"") -> None:
        ring = self.rings[1]
        head = (2 * self.avail_idx[1]) % ring.num
        assert len(payload) <= TX_SLOT
        if head not in self.tx_buffers:
            self.tx_buffers[head] = self._alloc(HEADER_SIZE + TX_SLOT)
        addr = self.tx_buffers[head]
        hdr.len = len(payload)
        self.mem[addr : addr + HEADER_SIZE] = hdr.pack()
        self.mem[addr + HEADER_SIZE : addr + HEADER_SIZE + len(payload)] = payload
        parts = [(addr, HEADER_SIZE, False)]
        if payload:
            parts.append((addr + HEADER_SIZE, len(payload), False))
        self._offer(ring, head, parts)

    def packet(self, op: Op, src_port: int, dst_port: int, **fields: int) -> Header:
        values = dict(flags=0, buf_alloc=256 << 10, fwd_cnt=0) | fields
        return Header(self.cid, HOST_CID, src_port, dst_port, 0, TYPE_STREAM, op, **values)

    def used(self, index: int) -> list[tuple[int, int]]:
        """New used elements ``(head, len)`` of ring ``index``."""
        ring = self.rings[index]
        idx = U16.unpack_from(self.mem, ring.used + 2)[0]
        out = []
        while self.used_seen[index] != idx:
            slot = ring.used + 4 + 8 * (self.used_seen[index] % ring.num)
            out.append(USED_ELEM.unpack_from(self.mem, slot))
            self.used_seen[index] = (self.used_seen[index] + 1) & 0xFFFF
        return out

    def receive(self, repost: bool = True) -> list[tuple[Header, bytes]]:
        """Packets the back-end delivered into rx buffers (buffers are offered again)."""
        packets = []
        for head, length in self.used(0):
            addr = self.buffers[head]
            hdr = Header.unpack_from(self.mem, addr)
            assert length == HEADER_SIZE + hdr.len
            packets.append((hdr, bytes(self.mem[addr + HEADER_SIZE : addr + length])))
            if repost:
                self.post_rx(1)
        return packets

    async def sent(self) -> None:
        """Wait until the back-end took every tx packet offered so far (slots are reused)."""
        ring = self.rings[1]
        while True:
            if U16.unpack_from(self.mem, ring.used + 2)[0] == self.avail_idx[1]:
                return
            await asyncio.sleep(0.001)  # polling guest memory: there is nothing to wait on

    async def wait_packets(self, count: int = 1, within: float = 5.0) -> list[tuple[Header, bytes]]:
        packets: list[tuple[Header, bytes]] = []
        async with asyncio.timeout(within):
            while len(packets) < count:
                packets += self.receive()
                if len(packets) < count:
                    await asyncio.sleep(0.005)
        return packets

    def close(self) -> None:
        if self.sock.fileno() < 0:
            return  # closed already
        self.mem.release()
        self._map.close()
        for fd in (self.memfd, *self.kick, *self.call):
            os.close(fd)
        self.sock.close()


def deadline(seconds: float) -> Callable[[AsyncTest], AsyncTest]:
    """Fail a test that hangs (a lost packet or wakeup) instead of stalling the run."""

    def wrap(test: AsyncTest) -> AsyncTest:
        @functools.wraps(test)
        async def run(*args: Any, **kwargs: Any) -> None:
            async with asyncio.timeout(seconds):
                await test(*args, **kwargs)

        return run

    return wrap


GUEST_CID = 7


@dataclass
class Rig:
    driver: GuestDriver
    muxer: VsockMuxer
    listener: vu.Listener
    uds: Path
    vhost: Path

    async def reconnect_frontend(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, str(self.vhost))
        self.driver = GuestDriver(sock)
        await self.driver.start()

    async def client(self, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_unix_connection(str(self.uds))
        writer.write(f"CONNECT {port}\n".encode())
        await writer.drain()
        return reader, writer

    async def connected(
        self, port: int = 5000, buf_alloc: int = 256 << 10
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Header]:
        """A hybrid client the test guest accepted; returns the guest's view (REQUEST)."""
        reader, writer = await self.client(port)
        ((req, _),) = await self.driver.wait_packets()
        assert req.op == Op.REQUEST
        d = self.driver
        d.send(d.packet(Op.RESPONSE, port, req.src_port, buf_alloc=buf_alloc))
        assert await reader.readline() == f"OK {req.src_port}\n".encode()
        return reader, writer, req


@contextlib.asynccontextmanager
async def open_rig(
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT, start: bool = True
) -> AsyncIterator[Rig]:
    """A back-end (muxer, hybrid listener, vhost-user listener) with a started test guest
    (``start=False``: no front-end yet, call ``reconnect_frontend`` to boot the guest)."""
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory(prefix="vsock-") as tmp:
        uds, vhost = Path(tmp) / "v.sock", Path(tmp) / "vhost.sock"
        muxer = VsockMuxer(GUEST_CID, str(uds), connect_timeout)
        server = await loop.create_unix_server(lambda: HostStream(muxer, None), str(uds))
        listener = vu.Listener(str(vhost), muxer, 2, loop)
        r = Rig(None, muxer, listener, uds, vhost)  # type: ignore[arg-type]
        if start:
            await r.reconnect_frontend()
        yield r
        listener.close()
        server.close()
        muxer.close()
        if r.driver is not None:
            r.driver.close()
