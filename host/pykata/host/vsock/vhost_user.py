"""The back-end side of the vhost-user protocol (QEMU docs/interop/vhost-user.rst).

Only what a vsock device needs: features, memory table, vring setup, config space (the
guest CID) and REPLY_ACK. Messages are a 12-byte header, a payload and SCM_RIGHTS fds.
"""

from __future__ import annotations

import array
import asyncio
import logging
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from pykata.host.vsock.virtqueue import (
    GuestMemory,
    GuestMemoryError,
    MemoryRegion,
    RingAddresses,
    Virtqueue,
)

log = logging.getLogger(__name__)

HEADER = struct.Struct("<III")  # request, flags, payload size
U64 = struct.Struct("<Q")
VRING_STATE = struct.Struct("<II")  # index, num
VRING_ADDR = struct.Struct("<IIQQQQ")  # index, flags, desc, used, avail, log
MEM_TABLE_HEAD = struct.Struct("<II")  # nregions, padding
MEM_REGION = struct.Struct("<QQQQ")  # guest_addr, size, user_addr, mmap_offset
CONFIG_HEAD = struct.Struct("<III")  # offset, size, flags

VERSION = 0x1
FLAG_REPLY = 1 << 2
FLAG_NEED_REPLY = 1 << 3
MAX_PAYLOAD = 4096
MAX_FDS = 8
VRING_INDEX_MASK = 0xFF
VRING_NOFD = 1 << 8

F_VERSION_1 = 1 << 32
F_PROTOCOL_FEATURES = 1 << 30
PROTOCOL_F_REPLY_ACK = 1 << 3
PROTOCOL_F_CONFIG = 1 << 9


class Request(IntEnum):
    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    GET_CONFIG = 24
    SET_CONFIG = 25


class ProtocolError(Exception):
    """The front-end sent something this back-end cannot accept; the session ends."""


@dataclass(slots=True)
class Message:
    request: int
    flags: int
    payload: bytes
    fds: list[int]

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & FLAG_NEED_REPLY)


def encode(request: int, payload: bytes = b"", flags: int = VERSION) -> bytes:
    return HEADER.pack(request, flags, len(payload)) + payload


def encode_reply(request: int, payload: bytes) -> bytes:
    return encode(request, payload, VERSION | FLAG_REPLY)


def decode_mem_table(payload: bytes) -> list[MemoryRegion]:
    if len(payload) < MEM_TABLE_HEAD.size:
        raise ProtocolError("SET_MEM_TABLE payload too short")
    count, _ = MEM_TABLE_HEAD.unpack_from(payload)
    if len(payload) < MEM_TABLE_HEAD.size + count * MEM_REGION.size:
        raise ProtocolError(f"SET_MEM_TABLE announces {count} regions but carries fewer")
    return [
        MemoryRegion(*MEM_REGION.unpack_from(payload, MEM_TABLE_HEAD.size + i * MEM_REGION.size))
        for i in range(count)
    ]


def encode_mem_table(regions: list[MemoryRegion]) -> bytes:
    body = b"".join(
        MEM_REGION.pack(r.guest_addr, r.size, r.user_addr, r.mmap_offset) for r in regions
    )
    return MEM_TABLE_HEAD.pack(len(regions), 0) + body


def _unpack(fmt: struct.Struct, payload: bytes, request: int) -> tuple[int, ...]:
    if len(payload) < fmt.size:
        name = Request(request).name
        raise ProtocolError(f"{name} payload is {len(payload)} bytes, needs {fmt.size}")
    return fmt.unpack_from(payload)


def recv_message(sock: socket.socket) -> Message | None:
    """Read one message from a blocking socket; None when the front-end hung up."""
    fd_bytes = socket.CMSG_SPACE(MAX_FDS * 4)
    head, ancdata, _, _ = sock.recvmsg(HEADER.size, fd_bytes, socket.MSG_WAITALL)
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - len(data) % arr.itemsize])
            fds.extend(arr)
    if len(head) < HEADER.size:
        for fd in fds:
            os.close(fd)
        return None
    request, flags, size = HEADER.unpack(head)
    if size > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {size} bytes for request {request} is too large")
    payload = sock.recv(size, socket.MSG_WAITALL) if size else b""
    if len(payload) < size:
        return None
    return Message(request, flags, payload, fds)


class Device(Protocol):
    """What a vhost-user device implements on top of the session (the vsock muxer)."""

    def config(self) -> bytes:
        """The device's config space (GET_CONFIG reads from it)."""

    def rings_started(self, session: Session) -> None:
        """Every vring is mapped and watched; the device may use them."""

    def rings_stopped(self) -> None:
        """The front-end stopped the device (guest reset, new memory table, hang-up)."""

    def kicked(self, queue: Virtqueue) -> None:
        """The guest made buffers available on ``queue``."""


class Session:
    """One front-end connection: owns the guest memory mapping and the vrings."""

    FEATURES = F_VERSION_1 | F_PROTOCOL_FEATURES
    PROTOCOL_FEATURES = PROTOCOL_F_REPLY_ACK | PROTOCOL_F_CONFIG

    def __init__(
        self,
        sock: socket.socket,
        device: Device,
        nqueues: int,
        watch_fd: Callable[[int, Callable[[], None] | None], None],
    ) -> None:
        """``watch_fd(fd, callback)`` registers (or with None removes) a kick fd reader."""
        self.sock = sock
        self.device = device
        self.queues = [Virtqueue(i) for i in range(nqueues)]
        self.memory: GuestMemory | None = None
        self.acked_features = 0
        self.acked_protocol_features = 0
        self._watch_fd = watch_fd
        self._running = False

    def handle(self, msg: Message) -> None:
        """Apply one message and send its reply (if any)."""
        try:
            reply = self._dispatch(msg)
        finally:
            for fd in msg.fds:
                os.close(fd)
        if reply is not None:
            self.sock.sendall(encode_reply(msg.request, reply))
        elif msg.need_reply and self.acked_protocol_features & PROTOCOL_F_REPLY_ACK:
            self.sock.sendall(encode_reply(msg.request, U64.pack(0)))

    def close(self) -> None:
        self._stop_rings()
        for q in self.queues:
            if q.kick_fd is not None:
                self._watch_fd(q.kick_fd, None)
            q.close_fds()
        if self.memory is not None:
            self.memory.close()
            self.memory = None

    def _queue(self, index: int) -> Virtqueue:
        if index >= len(self.queues):
            raise ProtocolError(f"vring {index} does not exist (device has {len(self.queues)})")
        return self.queues[index]

    def _take_fd(self, msg: Message) -> int:
        if not msg.fds:
            raise ProtocolError(f"{Request(msg.request).name} came without a file descriptor")
        return os.dup(msg.fds[0])

    def _dispatch(self, msg: Message) -> bytes | None:
        req, payload = msg.request, msg.payload
        if req == Request.GET_FEATURES:
            return U64.pack(self.FEATURES)
        if req == Request.SET_FEATURES:
            (self.acked_features,) = _unpack(U64, payload, req)
        elif req == Request.GET_PROTOCOL_FEATURES:
            return U64.pack(self.PROTOCOL_FEATURES)
        elif req == Request.SET_PROTOCOL_FEATURES:
            (self.acked_protocol_features,) = _unpack(U64, payload, req)
        elif req == Request.GET_QUEUE_NUM:
            return U64.pack(len(self.queues))
        elif req in (Request.SET_OWNER, Request.SET_CONFIG, Request.SET_VRING_ERR):
            # Config space is read-only and errors are only logged; nothing to keep.
            pass
        elif req == Request.RESET_OWNER:
            self._stop_rings()
        elif req == Request.SET_MEM_TABLE:
            self._set_mem_table(payload, msg.fds)
        elif req == Request.SET_VRING_NUM:
            index, num = _unpack(VRING_STATE, payload, req)
            if num == 0 or num & (num - 1) or num > 32768:
                raise ProtocolError(f"vring {index}: size {num} is not a power of two <= 32768")
            self._queue(index).num = num
        elif req == Request.SET_VRING_ADDR:
            index, _, desc, used, avail, _ = _unpack(VRING_ADDR, payload, req)
            self._queue(index).addresses = RingAddresses(desc, used, avail)
        elif req == Request.SET_VRING_BASE:
            index, base = _unpack(VRING_STATE, payload, req)
            self._queue(index).last_avail = base
        elif req == Request.GET_VRING_BASE:
            (index, _) = _unpack(VRING_STATE, payload, req)
            q = self._queue(index)
            self._stop_rings()
            if q.kick_fd is not None:
                self._watch_fd(q.kick_fd, None)
            q.close_fds()
            return VRING_STATE.pack(index, q.last_avail)
        elif req == Request.SET_VRING_KICK:
            self._set_kick(msg)
        elif req == Request.SET_VRING_CALL:
            (value,) = _unpack(U64, payload, req)
            q = self._queue(value & VRING_INDEX_MASK)
            if q.call_fd is not None:
                os.close(q.call_fd)
            q.call_fd = None if value & VRING_NOFD else self._take_fd(msg)
        elif req == Request.SET_VRING_ENABLE:
            index, enable = _unpack(VRING_STATE, payload, req)
            self._queue(index).enabled = bool(enable)
            self._maybe_start()
        elif req == Request.GET_CONFIG:
            offset, size, flags = _unpack(CONFIG_HEAD, payload, req)
            space = self.device.config()
            data = space[offset : offset + size].ljust(size, b"\0")
            return CONFIG_HEAD.pack(offset, size, flags) + data
        else:
            raise ProtocolError(f"unsupported vhost-user request {req}")
        return None

    def _set_mem_table(self, payload: bytes, fds: list[int]) -> None:
        regions = decode_mem_table(payload)
        if len(fds) != len(regions):
            raise ProtocolError(f"SET_MEM_TABLE: {len(regions)} regions but {len(fds)} fds")
        # A new table means the guest was reset or migrated: every ring restarts from scratch.
        self._stop_rings()
        if self.memory is not None:
            self.memory.close()
        self.memory = GuestMemory(list(zip(regions, fds, strict=True)))
        log.info(
            "guest memory: %s",
            ", ".join(f"{r.guest_addr:#x}+{r.size:#x}" for r in regions),
        )

    def _set_kick(self, msg: Message) -> None:
        (value,) = _unpack(U64, msg.payload, msg.request)
        q = self._queue(value & VRING_INDEX_MASK)
        if q.kick_fd is not None:
            self._watch_fd(q.kick_fd, None)
            os.close(q.kick_fd)
            q.kick_fd = None
        if value & VRING_NOFD:
            raise ProtocolError("polling vrings (no kick fd) are not supported")
        q.kick_fd = self._take_fd(msg)
        os.set_blocking(q.kick_fd, False)
        if self._running:  # a new kick fd for a running ring: just watch it
            self._watch_fd(q.kick_fd, self._kick_handler(q))
        else:
            self._maybe_start()

    def _maybe_start(self) -> None:
        """Start the device once every ring has a kick fd, then watch the kicks."""
        if self._running or self.memory is None:
            return
        if not all(q.kick_fd is not None and q.addresses and q.enabled for q in self.queues):
            return
        for q in self.queues:
            q.start(self.memory)
        self._running = True
        for q in self.queues:
            assert q.kick_fd is not None
            self._watch_fd(q.kick_fd, self._kick_handler(q))
        self.device.rings_started(self)
        for q in self.queues:
            self.device.kicked(q)

    def _kick_handler(self, q: Virtqueue) -> Callable[[], None]:
        def on_kick() -> None:
            if q.kick_fd is None:
                return
            try:
                os.eventfd_read(q.kick_fd)
            except BlockingIOError:
                return
            self.device.kicked(q)

        return on_kick

    def _stop_rings(self) -> None:
        if not self._running:
            return
        self._running = False
        for q in self.queues:
            q.stop()
        self.device.rings_stopped()


class Listener:
    """The back-end's listening socket; QEMU connects as the client (one at a time).

    A front-end that hangs up (QEMU restart) stops the device; the next one starts afresh.
    """

    def __init__(
        self, path: str, device: Device, nqueues: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.path = path
        self.device = device
        self.nqueues = nqueues
        self.loop = loop
        self.session: Session | None = None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(1)
        self.sock.setblocking(False)
        loop.add_reader(self.sock.fileno(), self._accept)

    def _watch(self, fd: int, callback: Callable[[], None] | None) -> None:
        if callback is None:
            self.loop.remove_reader(fd)
        else:
            self.loop.add_reader(fd, callback)

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return
        self._drop_session("a new front-end connected")
        # Replies are written synchronously; a front-end that stops reading is broken.
        conn.settimeout(10.0)
        self.session = Session(conn, self.device, self.nqueues, self._watch)
        self.loop.add_reader(conn.fileno(), self._on_message)
        log.info("front-end connected")

    def _on_message(self) -> None:
        session = self.session
        if session is None:
            return
        try:
            msg = recv_message(session.sock)
            if msg is None:
                self._drop_session("front-end hung up")
                return
            session.handle(msg)
        except (OSError, ValueError, ProtocolError, GuestMemoryError) as exc:
            self._drop_session(f"{type(exc).__name__}: {exc}")

    def _drop_session(self, why: str) -> None:
        session, self.session = self.session, None
        if session is None:
            return
        log.info("front-end session ends: %s", why)
        self.loop.remove_reader(session.sock.fileno())
        session.close()
        session.sock.close()

    def close(self) -> None:
        self._drop_session("back-end shutting down")
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
