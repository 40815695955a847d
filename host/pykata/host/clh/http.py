"""A minimal HTTP/1.1 server on a unix socket that also receives file descriptors.

Cloud Hypervisor's API clients send TAP fds as SCM_RIGHTS ancillary data along with the
bytes of a request (Kata's ``vm.add-net``), so the server reads with ``recvmsg`` instead of
asyncio streams. Requests on one connection are handled one after the other (persistent
connections, no pipelining of answers); every connection has its own task, so a slow
request on one connection never holds up a ping on another.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024
MAX_FDS_PER_READ = 64
READ_SIZE = 64 * 1024

REASONS = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}


class ProtocolError(Exception):
    """The peer sent something that is not an HTTP/1.1 request we can read."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    fds: list[int] = field(default_factory=list)

    def take_fds(self) -> list[int]:
        """Hand the received fds to the caller, who closes them; the server closes the rest."""
        fds, self.fds = self.fds, []
        return fds

    def json(self) -> Any:
        """The body as JSON (ValueError when it is not JSON)."""
        return json.loads(self.body.decode("utf-8"))


@dataclass(frozen=True)
class Response:
    status: int
    body: Any = None  # JSON-serialisable; None means no body

    def encode(self, close: bool) -> bytes:
        head = [f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Status')}"]
        payload = b""
        if self.body is not None:
            payload = json.dumps(self.body).encode()
            head.append("Content-Type: application/json")
        head.append(f"Content-Length: {len(payload)}")
        if close:
            head.append("Connection: close")
        return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


Handler = Callable[[Request], Awaitable[Response]]


class _Connection:
    """Reads requests (and their fds) from one accepted socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.fds: list[int] = []
        self.eof = False

    async def _fill(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(
                    READ_SIZE, socket.CMSG_SPACE(MAX_FDS_PER_READ * 4)
                )
                break
            except BlockingIOError:
                ready = loop.create_future()
                loop.add_reader(self.sock.fileno(), ready.set_result, None)
                try:
                    await ready
                finally:
                    loop.remove_reader(self.sock.fileno())
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                self.fds.extend(fds)
        if not data:
            self.eof = True
        self.buffer += data

    async def read_request(self) -> Request | None:
        """The next request, or None when the peer closed cleanly between requests."""
        while b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > MAX_HEAD:
                raise ProtocolError(413, "request head too large")
            await self._fill()
            if self.eof:
                if self.buffer.strip():
                    raise ConnectionResetError("peer closed in the middle of a request head")
                return None
        end = self.buffer.index(b"\r\n\r\n")
        head = bytes(self.buffer[:end]).decode("latin-1")
        del self.buffer[: end + 4]
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise ProtocolError(400, f"malformed request line: {lines[0][:200]!r}")
        method, target, _version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name.strip():
                raise ProtocolError(400, f"malformed header line: {line[:200]!r}")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise ProtocolError(411, "chunked bodies are not supported: send Content-Length")
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise ProtocolError(400, "Content-Length is not a number") from None
        if length < 0:
            raise ProtocolError(400, "negative Content-Length")
        if length > MAX_BODY:
            raise ProtocolError(413, f"body larger than {MAX_BODY} bytes")
        while len(self.buffer) < length:
            await self._fill()
            if self.eof:
                raise ConnectionResetError("peer closed in the middle of a request body")
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        fds, self.fds = self.fds, []
        path = target.split("?", 1)[0]
        return Request(method.upper(), path, headers, body, fds)

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    def close(self) -> None:
        close_fds(self.fds)
        self.fds = []
        self.sock.close()


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class Server:
    """Serves ``handler`` on a unix socket until ``close()``."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self.path))
        sock.listen(64)
        sock.setblocking(False)
        self._sock = sock
        self._accepting = asyncio.create_task(self._accept_loop())

    async def _accept_loop(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self._sock)
            conn.setblocking(False)
            task = asyncio.create_task(self._serve(_Connection(conn)))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    async def _serve(self, conn: _Connection) -> None:
        try:
            while True:
                try:
                    request = await conn.read_request()
                except ProtocolError as e:
                    await conn.send(Response(e.status, {"error": str(e)}).encode(close=True))
                    return
                if request is None:
                    return
                try:
                    response = await self.handler(request)
                finally:
                    close_fds(request.fds)
                close = request.headers.get("connection", "").lower() == "close"
                await conn.send(response.encode(close))
                if close:
                    return
        except (ConnectionError, BrokenPipeError) as e:
            log.debug("API client went away: %s", e)
        except Exception:
            log.exception("API connection failed")
        finally:
            conn.close()

    async def close(self) -> None:
        tasks = [t for t in (self._accepting, *self._connections) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self.path.unlink(missing_ok=True)
