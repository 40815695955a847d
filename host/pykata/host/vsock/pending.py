"""Hybrid CONNECTs held until the guest can answer them.

A Kata shim dials the hybrid socket while the guest boots and redials at once whenever the
stream closes, so refusing a CONNECT right away costs thousands of dials per boot. Like
Firecracker and Cloud Hypervisor, the back-end instead keeps the client's stream open
while the guest's vsock device is not up, and asks the guest again every
``RETRY_INTERVAL`` while it answers with RST (nobody listens on the port yet), until the
guest accepts or the connect timeout passes; then the client is closed, as a refusal.

A held connection is a :class:`Connection` in state CONNECTING whose ``local_port`` is
fresh for every request (a retry is a new dial, as far as the guest is concerned). What the
client writes meanwhile waits in the connection's pending bytes. This module owns only
the timing; the muxer sends the requests and closes the streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pykata.host.vsock.connection import Connection

if TYPE_CHECKING:
    from pykata.host.vsock.muxer import HostStream

RETRY_INTERVAL = 0.1  # seconds between requests a guest refused (RST)
DEFAULT_CONNECT_TIMEOUT = 60.0  # how long a CONNECT is held at most


@dataclass(slots=True)
class Held:
    stream: HostStream
    expiry: asyncio.TimerHandle
    retry: asyncio.TimerHandle | None = None  # the next request, after a refusal
    in_flight: bool = False  # a REQUEST awaits the guest's answer
    requests: int = 0


class HeldConnects:
    """The CONNECTs waiting for the guest, with their retry and expiry timers.

    ``request(conn)`` asks the guest (returns False when its vsock is not up: the
    connection then waits for :meth:`guest_up`); ``expired(conn, stream)`` closes a client
    whose time ran out.
    """

    def __init__(
        self,
        timeout: float,
        request: Callable[[Connection], bool],
        expired: Callable[[Connection, HostStream, int], None],
    ) -> None:
        self.timeout = timeout
        self._request = request
        self._expired = expired
        self._held: dict[Connection, Held] = {}

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, conn: Connection) -> bool:
        return conn in self._held

    def stream(self, conn: Connection) -> HostStream | None:
        entry = self._held.get(conn)
        return entry.stream if entry is not None else None

    def hold(self, conn: Connection, stream: HostStream) -> None:
        """Start holding a fresh CONNECT and ask the guest if it is up."""
        loop = asyncio.get_running_loop()
        expiry = loop.call_later(self.timeout, self._expire, conn)
        self._held[conn] = Held(stream, expiry)
        self._try(conn)

    def release(self, conn: Connection) -> None:
        """The guest accepted, or the client hung up: stop holding, cancel the timers."""
        entry = self._held.pop(conn, None)
        if entry is not None:
            entry.expiry.cancel()
            if entry.retry is not None:
                entry.retry.cancel()

    def refused(self, conn: Connection) -> bool:
        """The guest answered the request with RST (or not at all): ask again after
        ``RETRY_INTERVAL``. False when ``conn`` is not held (refuse it as before)."""
        entry = self._held.get(conn)
        if entry is None:
            return False
        entry.in_flight = False
        if entry.retry is None:
            loop = asyncio.get_running_loop()
            entry.retry = loop.call_later(RETRY_INTERVAL, self._try, conn)
        return True

    def guest_down(self, conn: Connection) -> bool:
        """The guest's vsock went away with this request in flight: wait for it to come
        back. False when ``conn`` is not held."""
        entry = self._held.get(conn)
        if entry is None:
            return False
        entry.in_flight = False
        return True

    def guest_up(self) -> None:
        """The guest's vsock is (back) up: ask for every connection that waited for it."""
        for conn, entry in list(self._held.items()):
            if not entry.in_flight and entry.retry is None:
                self._try(conn)

    def close(self) -> None:
        """Close every held client (the back-end stops)."""
        for conn, entry in list(self._held.items()):
            self.release(conn)
            entry.stream.close()

    def _try(self, conn: Connection) -> None:
        entry = self._held.get(conn)
        if entry is None:
            return
        entry.retry = None
        entry.in_flight = self._request(conn)
        entry.requests += entry.in_flight

    def _expire(self, conn: Connection) -> None:
        entry = self._held.get(conn)
        if entry is not None:
            self.release(conn)
            self._expired(conn, entry.stream, entry.requests)
