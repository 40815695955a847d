"""One connection to an agent, with connection problems turned into `ConnectionFailure`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

from google.protobuf import empty_pb2
from google.protobuf.message import Message

from pykata.host.ctl.errors import ConnectionFailure, UsageError
from pykata.host.ctl.methods import METHODS, Method
from pykata.ttrpc import Client
from pykata.ttrpc.errors import TtrpcError

M = TypeVar("M", bound=Message)


class Session:
    """A connected client with a default per-call timeout."""

    def __init__(self, client: Client, timeout: float) -> None:
        self.client = client
        self.timeout = timeout

    def deadline(self, method: Method) -> float | None:
        return None if method.blocking else self.timeout

    async def call(self, method: Method, request: Message) -> Message:
        return await self.client.call(
            method.service, method.name, request, method.response_type, self.deadline(method)
        )

    async def agent(self, name: str, request: Message, response_type: type[M]) -> M:
        """An AgentService call with its typed reply."""
        method = METHODS[name]
        return await self.client.call(
            method.service, name, request, response_type, self.deadline(method)
        )

    async def agent_empty(self, name: str, request: Message) -> None:
        await self.agent(name, request, empty_pb2.Empty)


@asynccontextmanager
async def open_session(address: str, call_timeout: float) -> AsyncIterator[Session]:
    try:
        client = await Client.connect(address, timeout=call_timeout)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except (OSError, TtrpcError) as exc:
        raise ConnectionFailure(f"cannot connect to {address}: {exc}") from None
    try:
        yield Session(client, call_timeout)
    finally:
        await client.close()
