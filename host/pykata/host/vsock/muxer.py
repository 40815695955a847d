"""The vsock device: guest packets <-> host unix sockets (hybrid vsock).

Host-initiated: a client connects to ``uds_path`` and writes ``CONNECT <port>\\n``; once the
guest accepts it reads ``OK <local port>\\n`` and then has a byte stream (a refused
connection is closed without a reply). A CONNECT the guest cannot answer yet (its vsock is
not up, or nobody listens on the port) is held and retried until the connect timeout (see
``pending``); a timeout of 0 refuses it at once. Guest-initiated: a connection to host port
N is forwarded to the unix socket ``<uds_path>_<N>`` (Firecracker's convention).
"""

from __future__ import annotations

import asyncio
import logging
import select
import struct
from collections import deque
from dataclasses import dataclass

from pykata.host.vsock.connection import Connection, State
from pykata.host.vsock.packet import (
    HEADER,
    HEADER_SIZE,
    HOST_CID,
    SHUTDOWN_BOTH,
    SHUTDOWN_RCV,
    SHUTDOWN_SEND,
    TYPE_STREAM,
    Header,
    Op,
)
from pykata.host.vsock.pending import DEFAULT_CONNECT_TIMEOUT, HeldConnects
from pykata.host.vsock.vhost_user import Session
from pykata.host.vsock.virtqueue import Chain, GuestMemory, GuestMemoryError, Virtqueue

log = logging.getLogger(__name__)

RX_QUEUE = 0
TX_QUEUE = 1
BUF_ALLOC = 1 << 20  # our receive buffer per connection, advertised to the guest
PENDING_LIMIT = 256 << 10  # host bytes read ahead per connection before reading pauses
MAX_CONNECT_LINE = 64
CLOSE_TIMEOUT = 10.0  # how long a closed host side waits for the guest's RST
CONNECT_TIMEOUT = 10.0  # how long one REQUEST waits for the guest's answer (a hung guest)
FIRST_LOCAL_PORT = 1 << 30  # host ports handed to CONNECT clients (as Firecracker does)
CID_CONFIG = struct.Struct("<Q")
SHUTTING = (State.ESTABLISHED, State.CLOSING)  # states in which a SHUTDOWN may go out


@dataclass(slots=True)
class Control:
    """A packet without payload waiting for an rx buffer."""

    local_port: int
    peer_port: int
    op: Op
    flags: int = 0
    conn: Connection | None = None


class HostStream(asyncio.Protocol):
    """The host unix socket of one connection (accepted hybrid client or dialled socket)."""

    def __init__(self, muxer: VsockMuxer, conn: Connection | None) -> None:
        self.muxer = muxer
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.reading_paused = False
        self.window = 0
        self._line = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.set_window(BUF_ALLOC)

    def set_window(self, window: int) -> None:
        """Pause at half the guest's window, so that resume_writing is our cue to send the
        credit update a guest that ran out of credit waits for."""
        if window != self.window and self.transport is not None:
            self.window = window
            self.transport.set_write_buffer_limits(high=window // 2, low=window // 4)

    def buffered(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport else 0

    def data_received(self, data: bytes) -> None:
        if self.conn is not None:
            self.muxer.host_data(self.conn, data)
            return
        self._line += data
        end = self._line.find(b"\n")
        if end < 0:
            if len(self._line) > MAX_CONNECT_LINE:
                self.muxer.refuse(self, "CONNECT line too long")
            return
        line, rest = bytes(self._line[:end]), bytes(self._line[end + 1 :])
        self._line.clear()
        self.muxer.hybrid_connect(self, line, rest)

    def eof_received(self) -> bool:
        if self.conn is not None:
            self.muxer.host_eof(self.conn)
        return True  # keep the other direction open (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.conn is not None:
            self.muxer.host_closed(self.conn)

    def pause_writing(self) -> None:
        pass  # credit stops the guest; resume_writing tells it about the room again

    def resume_writing(self) -> None:
        if self.conn is not None:
            self.muxer.host_drained(self.conn)

    def write(self, data: bytes | memoryview) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        """Close after flushing what the guest already sent; detaches from the muxer."""
        self.conn = None
        if self.transport is not None:
            self.transport.close()

    def write_eof(self) -> None:
        if self.transport is not None and self.transport.can_write_eof():
            self.transport.write_eof()

    def peer_gone(self) -> bool:
        """After EOF: True when the client closed its socket rather than only its sending
        side (a unix socket whose peer closed polls as POLLHUP, a half-closed one does not)."""
        sock = self.transport.get_extra_info("socket") if self.transport else None
        if sock is None:
            return True
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return any(events & select.POLLHUP for _, events in poller.poll(0))


def scatter(bufs: list[memoryview], pieces: tuple[bytes | memoryview, ...]) -> int:
    """Copy ``pieces`` into consecutive guest buffers; returns the byte count."""
    index, offset, total = 0, 0, 0
    for piece in pieces:
        pos, size = 0, len(piece)
        while pos < size:
            buf = bufs[index]
            room = len(buf) - offset
            if room == 0:
                index, offset = index + 1, 0
                continue
            n = min(room, size - pos)
            buf[offset : offset + n] = piece[pos : pos + n]
            offset += n
            pos += n
        total += size
    return total


def write_packet(bufs: list[memoryview], header: bytes, data: memoryview) -> int:
    """Write a packet into a guest rx chain; returns its length.

    Linux posts a 44-byte header buffer followed by a data buffer (6.1) or one buffer for
    both (6.2+): those two layouts take two slice copies, anything else goes piecewise.
    """
    first, n = bufs[0], len(data)
    if len(first) == HEADER_SIZE and len(bufs) > 1 and len(bufs[1]) >= n:
        first[:] = header
        bufs[1][:n] = data
    elif len(first) >= HEADER_SIZE + n:
        first[:HEADER_SIZE] = header
        first[HEADER_SIZE : HEADER_SIZE + n] = data
    else:
        scatter(bufs, (header, data))
    return HEADER_SIZE + n


def gather(chain: Chain) -> tuple[Header, list[memoryview]]:
    """The header and payload buffers of a guest tx chain."""
    first = chain.readable[0] if chain.readable else memoryview(b"")
    if len(first) >= HEADER_SIZE:
        header = Header.unpack_from(first)
        payload = [first[HEADER_SIZE:], *chain.readable[1:]]
    else:
        joined = memoryview(b"".join(chain.readable))
        header = Header.unpack_from(joined)
        payload = [joined[HEADER_SIZE:]]
    budget = header.len
    trimmed = []
    for buf in payload:
        if budget <= 0:
            break
        part = buf[:budget]
        trimmed.append(part)
        budget -= len(part)
    return header, trimmed


class VsockMuxer:
    """The vhost-user device behind ``vhost-user-vsock-pci`` plus the hybrid listener."""

    def __init__(
        self, guest_cid: int, uds_path: str, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    ) -> None:
        self.guest_cid = guest_cid
        self.uds_path = uds_path
        self.held = HeldConnects(connect_timeout, self._request, self._give_up)
        self.conns: dict[tuple[int, int], Connection] = {}
        self.streams: dict[tuple[int, int], HostStream] = {}
        self._memory: GuestMemory | None = None
        self._rx: Virtqueue | None = None
        self._tx: Virtqueue | None = None
        self._control: deque[Control] = deque()
        self._ready: deque[Connection] = deque()
        self._next_port = FIRST_LOCAL_PORT
        self._tasks: set[asyncio.Task[None]] = set()
        self._timers: dict[tuple[int, int], asyncio.TimerHandle] = {}

    # vhost-user device interface

    def config(self) -> bytes:
        return CID_CONFIG.pack(self.guest_cid)

    def rings_started(self, session: Session) -> None:
        self._memory = session.memory
        self._rx, self._tx = session.queues[RX_QUEUE], session.queues[TX_QUEUE]
        log.info("guest vsock up (cid %d)", self.guest_cid)
        self.held.guest_up()

    def rings_stopped(self) -> None:
        """The guest's vsock went away: every connection of the old guest is dead; held
        CONNECTs wait for the next one."""
        log.info("guest vsock stopped; closing %d connections", len(self.conns))
        self._memory = self._rx = self._tx = None
        for key, conn in list(self.conns.items()):
            if self.held.guest_down(conn):
                self._detach(conn)
            else:
                self._forget(key)
        self._control.clear()
        self._ready.clear()
        for task in self._tasks:
            task.cancel()

    def kicked(self, queue: Virtqueue) -> None:
        try:
            if queue is self._tx:
                self._process_tx()
            self._flush_rx()
        except GuestMemoryError as exc:
            log.error("bad guest ring state, device stopped until reset: %s", exc)
            self._memory = self._rx = self._tx = None

    def close(self) -> None:
        """The back-end stops: close every connection, held ones too."""
        self.rings_stopped()
        self.held.close()

    @property
    def guest_up(self) -> bool:
        return self._rx is not None

    # host side events

    def hybrid_connect(self, stream: HostStream, line: bytes, rest: bytes) -> None:
        parts = line.strip().split()
        if len(parts) != 2 or parts[0] != b"CONNECT" or not parts[1].isdigit():
            self.refuse(stream, f"bad handshake {line[:MAX_CONNECT_LINE]!r}")
            return
        port = int(parts[1])
        if port > 0xFFFFFFFF:
            self.refuse(stream, f"port {port} out of range")
            return
        conn = Connection(0, port, State.CONNECTING, BUF_ALLOC)  # port: see _request
        conn.queue(rest)
        stream.conn = conn
        if self.held.timeout > 0:
            self.held.hold(conn, stream)
        elif not self._request(conn, stream):
            # Clients poll like this while the guest boots: not worth a log line each.
            log.debug("closing hybrid client: guest vsock is not running")
            stream.close()

    def _request(self, conn: Connection, stream: HostStream | None = None) -> bool:
        """Ask the guest to accept ``conn`` (from a fresh host port); False when the
        guest's vsock is not up."""
        if not self.guest_up:
            return False
        stream = stream or self.held.stream(conn)
        assert stream is not None
        conn.local_port = self._allocate_port()
        self._add(conn, stream)
        self._arm(conn, CONNECT_TIMEOUT)
        self._send_control(conn, Op.REQUEST)
        self._flush_rx()
        return True

    def _give_up(self, conn: Connection, stream: HostStream, requests: int) -> None:
        """A held CONNECT ran out of time: refuse it (reset a request in flight)."""
        log.info(
            "closing hybrid client for guest port %d: not accepted within %gs (%d requests)",
            conn.peer_port, self.held.timeout, requests,
        )  # fmt: skip
        if self.conns.get(conn.key) is conn:
            self._send_control(conn, Op.RST)
            self._forget(conn.key)
            self._flush_rx()
        stream.close()

    def _refused(self, conn: Connection) -> None:
        """The guest reset (or ignored) our REQUEST: retry a held CONNECT, else close."""
        if conn.state is State.CONNECTING and self.held.refused(conn):
            self._detach(conn)
        else:
            self._forget(conn.key)

    def refuse(self, stream: HostStream, why: str) -> None:
        log.info("closing hybrid client: %s", why)
        stream.close()

    def host_data(self, conn: Connection, data: bytes) -> None:
        if conn.state is State.CLOSING:
            return
        conn.queue(data)
        stream = self._stream_of(conn)
        if stream is not None and conn.pending_bytes >= PENDING_LIMIT:
            stream.pause_reading()
        self._schedule(conn)
        self._flush_rx()

    def host_eof(self, conn: Connection) -> None:
        stream = self._stream_of(conn)
        if conn in self.held and stream is not None and stream.peer_gone():
            # Hung up while held: forget it now, not at the deadline or the guest's answer.
            self.host_closed(conn)
            stream.close()
            return
        conn.shutdown_after_drain |= SHUTDOWN_SEND
        self._after_drain(conn)
        self._flush_rx()

    def host_closed(self, conn: Connection) -> None:
        """The host socket is gone: deliver what it sent, then shut the guest side down."""
        self.held.release(conn)
        if self.conns.get(conn.key) is not conn:
            return
        self.streams.pop(conn.key, None)
        if conn.state is not State.ESTABLISHED:
            self._send_control(conn, Op.RST)
            self._forget(conn.key)
        else:
            conn.state = State.CLOSING
            conn.shutdown_after_drain = SHUTDOWN_BOTH
            self._after_drain(conn)
            self._arm(conn, CLOSE_TIMEOUT)
        self._flush_rx()

    def host_drained(self, conn: Connection) -> None:
        stream = self.streams.get(conn.key)
        if stream is not None and conn.needs_credit_update(stream.buffered()):
            self._send_control(conn, Op.CREDIT_UPDATE)
            self._flush_rx()

    def _arm(self, conn: Connection, seconds: float) -> None:
        """Reset the connection unless the guest settles it in time (answers our REQUEST,
        or sends the RST a closing connection waits for)."""
        self._disarm(conn)
        loop = asyncio.get_running_loop()
        self._timers[conn.key] = loop.call_later(seconds, self._timed_out, conn)

    def _disarm(self, conn: Connection) -> None:
        timer = self._timers.pop(conn.key, None)
        if timer is not None:
            timer.cancel()

    def _timed_out(self, conn: Connection) -> None:
        self._timers.pop(conn.key, None)
        if self.conns.get(conn.key) is conn:
            log.info("guest port %d did not answer in time; resetting", conn.peer_port)
            self._send_control(conn, Op.RST)
            self._refused(conn)
            self._flush_rx()

    # connection table

    def _allocate_port(self) -> int:
        used = {port for port, _ in self.conns}
        while True:
            port = self._next_port
            self._next_port = port + 1 if port < 0xFFFFFFFF else FIRST_LOCAL_PORT
            if port not in used:
                return port

    def _add(self, conn: Connection, stream: HostStream | None) -> None:
        self.conns[conn.key] = conn
        if stream is not None:
            self.streams[conn.key] = stream

    def _forget(self, key: tuple[int, int]) -> None:
        conn = self.conns.pop(key, None)
        if conn is not None:
            self._disarm(conn)
            self.held.release(conn)
        stream = self.streams.pop(key, None)
        if stream is not None:
            stream.close()

    def _detach(self, conn: Connection) -> None:
        """Take a held connection out of the table, its client stream left open."""
        self._disarm(conn)
        del self.conns[conn.key]
        self.streams.pop(conn.key, None)

    def _stream_of(self, conn: Connection) -> HostStream | None:
        if self.conns.get(conn.key) is conn:
            return self.streams.get(conn.key)
        return self.held.stream(conn)

    # guest -> host

    def _process_tx(self) -> None:
        tx, memory = self._tx, self._memory
        if tx is None or memory is None:
            return
        while (chain := tx.pop(memory)) is not None:
            try:
                header, payload = gather(chain)
                self._on_packet(header, payload)
            except ValueError as exc:
                log.warning("dropping malformed guest packet: %s", exc)
            except GuestMemoryError:
                raise
            except Exception:
                # A bug must cost one packet, not the ring: the chain still goes back.
                log.exception("failed to handle a guest packet")
            tx.push(chain, 0)
        tx.notify()

    def _on_packet(self, hdr: Header, payload: list[memoryview]) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("guest -> host: %s", hdr)
        if hdr.dst_cid != HOST_CID or hdr.src_cid != self.guest_cid:
            log.warning("dropping packet %d->%d (not guest->host)", hdr.src_cid, hdr.dst_cid)
            return
        key = (hdr.dst_port, hdr.src_port)
        conn = self.conns.get(key)
        if hdr.type != TYPE_STREAM:
            if hdr.op != Op.RST:
                self._send_rst(hdr.dst_port, hdr.src_port)
            return
        if hdr.op == Op.REQUEST:
            self._guest_request(hdr, conn)
            return
        if conn is None:
            if hdr.op != Op.RST:
                self._send_rst(hdr.dst_port, hdr.src_port)
            return
        conn.update_peer(hdr.buf_alloc, hdr.fwd_cnt)
        stream = self.streams.get(key)
        if stream is not None:
            stream.set_window(conn.window())
        if hdr.op == Op.RESPONSE:
            if conn.state is State.CONNECTING and stream is not None:
                self._disarm(conn)
                self.held.release(conn)
                conn.state = State.ESTABLISHED
                stream.write(f"OK {conn.local_port}\n".encode())
                self._after_drain(conn)
            else:
                self._send_control(conn, Op.RST)
                self._forget(key)
        elif hdr.op == Op.RW:
            size = sum(len(b) for b in payload)
            conn.received(size)
            if size and stream is not None and conn.state is State.ESTABLISHED:
                stream.write(b"".join(payload) if len(payload) > 1 else bytes(payload[0]))
                if conn.needs_credit_update(stream.buffered()):
                    self._send_control(conn, Op.CREDIT_UPDATE)
        elif hdr.op == Op.CREDIT_REQUEST:
            self._send_control(conn, Op.CREDIT_UPDATE)
        elif hdr.op == Op.SHUTDOWN:
            self._guest_shutdown(conn, stream, hdr.flags)
        elif hdr.op == Op.RST:
            self._refused(conn)
        self._schedule(conn)

    def _guest_request(self, hdr: Header, conn: Connection | None) -> None:
        if conn is not None:
            self._send_rst(hdr.dst_port, hdr.src_port)
            return
        conn = Connection(hdr.dst_port, hdr.src_port, State.ACCEPTING, BUF_ALLOC)
        conn.update_peer(hdr.buf_alloc, hdr.fwd_cnt)
        self._add(conn, None)
        task = asyncio.get_running_loop().create_task(self._dial_host(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dial_host(self, conn: Connection) -> None:
        path = f"{self.uds_path}_{conn.local_port}"
        loop = asyncio.get_running_loop()
        try:
            _, stream = await loop.create_unix_connection(lambda: HostStream(self, conn), path)
        except OSError as exc:
            log.info("guest connection to host port %d refused: %s", conn.local_port, exc)
            if self.conns.get(conn.key) is conn:
                self._send_control(conn, Op.RST)
                self._forget(conn.key)
                self._flush_rx()
            return
        if self.conns.get(conn.key) is not conn:
            stream.close()  # the guest gave up (RST) or was reset meanwhile
            return
        self.streams[conn.key] = stream
        conn.state = State.ESTABLISHED
        self._send_control(conn, Op.RESPONSE)
        self._after_drain(conn)  # the host side may have written (or closed) already
        self._flush_rx()

    def _guest_shutdown(self, conn: Connection, stream: HostStream | None, flags: int) -> None:
        if flags & SHUTDOWN_BOTH == SHUTDOWN_BOTH or conn.state is State.CLOSING:
            # The guest closed its socket; it waits for our RST to free it.
            self._send_control(conn, Op.RST)
            self._forget(conn.key)
            return
        if flags & SHUTDOWN_SEND and stream is not None:
            stream.write_eof()
        if flags & SHUTDOWN_RCV:
            conn.drop_pending()

    # host -> guest

    def _send_rst(self, local_port: int, peer_port: int) -> None:
        self._control.append(Control(local_port, peer_port, Op.RST))

    def _send_control(self, conn: Connection, op: Op, flags: int = 0) -> None:
        self._control.append(Control(conn.local_port, conn.peer_port, op, flags, conn))

    def _schedule(self, conn: Connection) -> None:
        if not conn.scheduled and conn.sendable() and self.conns.get(conn.key) is conn:
            conn.scheduled = True
            self._ready.append(conn)

    def _after_drain(self, conn: Connection) -> None:
        """Queue the deferred SHUTDOWN once every pending byte went out."""
        if conn.pending_bytes == 0 and conn.shutdown_after_drain and conn.state in SHUTTING:
            self._send_control(conn, Op.SHUTDOWN, conn.shutdown_after_drain)
            conn.shutdown_after_drain = 0
        else:
            self._schedule(conn)

    def _header(self, local_port: int, peer_port: int, op: int, size: int, flags: int) -> Header:
        return Header(
            HOST_CID, self.guest_cid, local_port, peer_port, size, TYPE_STREAM, op, flags, 0, 0
        )

    def _flush_rx(self) -> None:
        """Fill guest rx buffers: control packets first, then data round-robin."""
        rx, memory = self._rx, self._memory
        if rx is None or memory is None:
            return
        while self._control or self._ready:
            if self._control:
                ctl = self._control[0]
                chain = rx.pop(memory)
                if chain is None:
                    break
                self._control.popleft()
                hdr = self._header(ctl.local_port, ctl.peer_port, ctl.op, 0, ctl.flags)
                if ctl.conn is not None:
                    stream = self.streams.get(ctl.conn.key)
                    hdr.buf_alloc, hdr.fwd_cnt = ctl.conn.report(stream.buffered() if stream else 0)
                rx.push(chain, scatter(chain.writable, (hdr.pack(),)))
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("host -> guest: %s", hdr)
                continue
            conn = self._ready.popleft()
            conn.scheduled = False
            if not conn.sendable() or self.conns.get(conn.key) is not conn:
                continue
            chain = rx.pop(memory)
            if chain is None:
                self._ready.appendleft(conn)
                conn.scheduled = True
                break
            if chain.writable_size() <= HEADER_SIZE:
                raise GuestMemoryError("guest rx buffer cannot hold a packet")
            data = conn.take(chain.writable_size() - HEADER_SIZE)
            stream = self.streams.get(conn.key)
            buf_alloc, fwd_cnt = conn.report(stream.buffered() if stream else 0)
            header = HEADER.pack(
                HOST_CID, self.guest_cid, conn.local_port, conn.peer_port, len(data),
                TYPE_STREAM, Op.RW, 0, buf_alloc, fwd_cnt,
            )  # fmt: skip
            rx.push(chain, write_packet(chain.writable, header, data))
            if log.isEnabledFor(logging.DEBUG):
                log.debug("host -> guest: %s", Header.unpack_from(header))
            if stream is not None and conn.pending_bytes < PENDING_LIMIT // 2:
                stream.resume_reading()
            self._after_drain(conn)
        rx.notify()
