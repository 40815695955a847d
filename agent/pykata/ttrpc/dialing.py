"""Connected client sockets: unix, vsock and hybrid vsock, retried until a deadline.

A guest agent is often not listening yet when the host first dials (the VM is booting),
so connection failures are retried with exponential backoff until the overall timeout.
"""

from __future__ import annotations

import asyncio
import socket

from pykata.ttrpc.addresses import Address, HvsockAddress, UnixAddress, stream_socket
from pykata.ttrpc.errors import Unavailable

HANDSHAKE_TIMEOUT = 5.0
_FIRST_BACKOFF = 0.02
_MAX_BACKOFF = 1.0
# "OK <host port>\n" is short; a longer line means we are not talking to a vsock mux.
_MAX_REPLY = 64


async def dial(address: Address, timeout: float) -> socket.socket:  # noqa: ASYNC109
    """Connect (and for hybrid vsock, complete the CONNECT handshake) within timeout
    seconds; raises Unavailable with the last failure when the time is up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = _FIRST_BACKOFF
    failure: OSError | None = None
    while True:
        attempt = asyncio.timeout_at(deadline)
        try:
            async with attempt:
                return await _connect(loop, address)
        except OSError as exc:
            if not attempt.expired():
                failure = exc
        remaining = deadline - loop.time()
        if remaining <= 0:
            last = f" (last error: {failure})" if failure else ""
            raise Unavailable(
                f"connect {address}: no connection within {timeout:g}s{last}"
            ) from failure
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, _MAX_BACKOFF)


async def _connect(loop: asyncio.AbstractEventLoop, address: Address) -> socket.socket:
    target = UnixAddress(address.path) if isinstance(address, HvsockAddress) else address
    sock = stream_socket(target)
    try:
        await loop.sock_connect(sock, target.sockaddr)
        if isinstance(address, HvsockAddress):
            await _handshake(loop, sock, address.port)
    except BaseException:
        sock.close()
        raise
    return sock


async def _handshake(loop: asyncio.AbstractEventLoop, sock: socket.socket, port: int) -> None:
    await loop.sock_sendall(sock, f"CONNECT {port}\n".encode())
    line = bytearray()
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            # One byte at a time: whatever follows the newline already belongs to ttRPC.
            while not line.endswith(b"\n"):
                byte = await loop.sock_recv(sock, 1)
                if not byte:
                    raise ConnectionResetError(
                        f"hybrid vsock: connection closed after CONNECT {port} ({bytes(line)!r})"
                    )
                line += byte
                if len(line) > _MAX_REPLY:
                    raise ConnectionError(f"hybrid vsock: reply too long: {bytes(line)!r}")
    except TimeoutError:
        raise ConnectionError(
            f"hybrid vsock: no reply to CONNECT {port} within {HANDSHAKE_TIMEOUT:g}s"
        ) from None
    if not line.startswith(b"OK"):
        raise ConnectionRefusedError(f"hybrid vsock: CONNECT {port} refused: {bytes(line)!r}")
