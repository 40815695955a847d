"""A persistent QMP connection: commands one at a time, fds passed along, events collected.

Hot-plugging a TAP device into a running QEMU needs its fds handed over with ``getfd`` as
SCM_RIGHTS on the QMP socket, which asyncio streams cannot send, so this talks to the raw
socket. ``DEVICE_DELETED`` events tell when the guest has let go of an unplugged device.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import socket
from pathlib import Path
from typing import Any

TIMEOUT = 4.0  # under the shim's 5 s hot-plug deadline


class QmpError(Exception):
    """QEMU answered with an error, hung up, or did not answer in time."""


class Qmp:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()
        self._lock = asyncio.Lock()
        self.events: list[dict[str, Any]] = []
        self._event_seen = asyncio.Event()

    @classmethod
    async def connect(cls, path: Path, within: float = 10.0) -> Qmp:
        """Connect (retrying while QEMU starts up) and leave negotiation mode."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, str(path))
                break
            except OSError as e:
                sock.close()
                if loop.time() > deadline:
                    raise QmpError(f"QMP socket {path}: {e}") from None
                await asyncio.sleep(0.02)
        qmp = cls(sock)
        try:
            await asyncio.wait_for(qmp._read_message(), TIMEOUT)  # greeting
            await qmp.execute("qmp_capabilities")
        except BaseException:
            qmp.close()
            raise
        return qmp

    async def _read_message(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        while b"\n" not in self._buffer:
            data = await loop.sock_recv(self._sock, 65536)
            if not data:
                raise QmpError("QEMU closed the QMP connection")
            self._buffer += data
        end = self._buffer.index(b"\n")
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        message: dict[str, Any] = json.loads(line)
        return message

    async def execute(
        self, command: str, arguments: dict[str, Any] | None = None, fds: list[int] | None = None
    ) -> Any:
        """Run one command; returns its ``return`` value, raises QmpError on ``error``."""
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        data = json.dumps(request).encode() + b"\n"
        async with self._lock:
            try:
                return await asyncio.wait_for(self._exchange(data, fds or []), TIMEOUT)
            except TimeoutError:
                raise QmpError(f"QEMU did not answer {command} within {TIMEOUT}s") from None
            except OSError as e:
                raise QmpError(f"QMP {command}: {e}") from None

    async def _exchange(self, data: bytes, fds: list[int]) -> Any:
        if fds:
            # A few hundred bytes on a fresh unix socket: the send buffer takes it at once.
            self._sock.sendmsg(
                [data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
            )
        else:
            await asyncio.get_running_loop().sock_sendall(self._sock, data)
        while True:
            message = await self._read_message()
            if "event" in message:
                self.events.append(message)
                self._event_seen.set()
                continue
            if "error" in message:
                error = message["error"]
                raise QmpError(f"{error.get('class', 'Error')}: {error.get('desc', error)}")
            return message.get("return")

    async def wait_event(self, name: str, match: dict[str, Any], within: float) -> bool:
        """Wait for an event whose ``data`` contains ``match``; True when it came."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            for event in self.events:
                data = event.get("data", {})
                if event.get("event") == name and all(data.get(k) == v for k, v in match.items()):
                    self.events.remove(event)
                    return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            if self._lock.locked():
                await asyncio.sleep(min(0.05, remaining))
                continue
            # Nobody else reads the socket now: read events ourselves.
            async with self._lock:
                with contextlib.suppress(TimeoutError):
                    message = await asyncio.wait_for(self._read_message(), min(0.2, remaining))
                    if "event" in message:
                        self.events.append(message)

    def close(self) -> None:
        self._sock.close()
