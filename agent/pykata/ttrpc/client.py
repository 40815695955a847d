"""The asyncio ttRPC client: concurrent unary calls multiplexed over one connection."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, TypeVar

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from pykata.protocols import ttrpc_pb2
from pykata.ttrpc.addresses import parse_address
from pykata.ttrpc.dialing import dial
from pykata.ttrpc.errors import (
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
    error_for_status,
)
from pykata.ttrpc.framing import MAX_PAYLOAD, FrameDecoder, FrameType, FrameWriter, Refused

M = TypeVar("M", bound=Message)

_REQUEST = FrameType.REQUEST.value
_RESPONSE = FrameType.RESPONSE.value
_MAX_STREAM_ID = 0xFFFFFFFF
_parse_response = ttrpc_pb2.Response.FromString


class _ClientProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.decoder = FrameDecoder()
        # stream id -> future of the raw Response bytes (None: payload was oversized)
        self.pending: dict[int, asyncio.Future[bytes | None]] = {}
        self.lost: Exception | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        for stream_id, frame_type, _flags, payload in self.decoder.feed(data):
            if frame_type != _RESPONSE:
                continue
            waiter = self.pending.get(stream_id)
            # A missing waiter is a call that already timed out or was cancelled.
            if waiter is not None and not waiter.done():
                waiter.set_result(None if isinstance(payload, Refused) else payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = Unavailable(f"connection closed{f': {exc}' if exc else ''}")
        for waiter in self.pending.values():
            if not waiter.done():
                waiter.set_exception(self.lost)
        self.closed.set_result(None)


class Client:
    """A ttRPC connection; use Client.connect() and call() or stub()."""

    def __init__(self, transport: asyncio.Transport, protocol: _ClientProtocol) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport = transport
        self._protocol = protocol
        self._writer = FrameWriter(transport, self._loop)
        self._next_stream_id = 1

    # Explicit timeouts are this API's contract (a call's becomes timeout_nano): ASYNC109.
    @classmethod
    async def connect(cls, address: str, timeout: float = 10.0) -> Client:  # noqa: ASYNC109
        """Dial unix://, vsock:// or hvsock:// (retrying until timeout); raises
        ValueError for a malformed address and Unavailable when no connection came up."""
        sock = await dial(parse_address(address), timeout)
        transport, protocol = await asyncio.get_running_loop().create_connection(
            _ClientProtocol, sock=sock
        )
        return cls(transport, protocol)

    async def call(
        self,
        service: str,
        method: str,
        request: Message,
        response_type: type[M],
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> M:
        """One unary call. A non-OK status raises its TtrpcError subclass; timeout (seconds)
        is sent as timeout_nano and also enforced here as DeadlineExceeded."""
        protocol = self._protocol
        if protocol.lost is not None:
            raise protocol.lost
        if self._transport.is_closing():
            raise Unavailable("client is closed")
        stream_id = self._next_stream_id
        if stream_id > _MAX_STREAM_ID:
            raise Unavailable("stream ids exhausted on this connection; reconnect")
        self._next_stream_id = stream_id + 2
        frame = ttrpc_pb2.Request(
            service=service, method=method, payload=request.SerializeToString()
        )
        if timeout is not None:
            frame.timeout_nano = max(1, int(timeout * 1e9))
        body = frame.SerializeToString()
        if len(body) > MAX_PAYLOAD:
            raise ResourceExhausted(f"request of {len(body)} bytes exceeds {MAX_PAYLOAD}")
        waiter: asyncio.Future[bytes | None] = self._loop.create_future()
        protocol.pending[stream_id] = waiter
        self._writer.write(stream_id, _REQUEST, body)
        try:
            if timeout is None:
                raw = await waiter
            else:
                try:
                    async with asyncio.timeout(timeout):
                        raw = await waiter
                except TimeoutError:
                    raise DeadlineExceeded(
                        f"{service}/{method}: no response within {timeout:g}s"
                    ) from None
        finally:
            del protocol.pending[stream_id]
        if raw is None:
            raise ResourceExhausted(f"{service}/{method}: response exceeds {MAX_PAYLOAD} bytes")
        try:
            response = _parse_response(raw)
            if response.HasField("status") and response.status.code:
                raise error_for_status(response.status.code, response.status.message)
            return response_type.FromString(response.payload)
        except DecodeError as exc:
            raise Internal(f"{service}/{method}: undecodable response: {exc}") from None

    def stub(self, service: ServiceDescriptor) -> ServiceStub:
        """An object with one async method per RPC of service, e.g. stub.Check(req)."""
        return ServiceStub(self, service)

    async def close(self) -> None:
        if not self._transport.is_closing():
            self._transport.close()
        await self._protocol.closed

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class StubMethod:
    """One RPC of a stub: ``await stub.Method(request, timeout=...)``."""

    def __init__(
        self,
        client: Client,
        service: str,
        method: str,
        request_type: type[Message],
        response_type: type[Message],
    ) -> None:
        self._client = client
        self._service = service
        self._method = method
        self._request_type = request_type
        self._response_type = response_type

    async def __call__(
        self,
        request: Message,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Any:  # the response class is known only from the descriptor, at run time
        if type(request) is not self._request_type:
            raise InvalidArgument(
                f"{self._service}/{self._method} takes {self._request_type.__name__}, "
                f"not {type(request).__name__}"
            )
        return await self._client.call(
            self._service, self._method, request, self._response_type, timeout
        )


class ServiceStub:
    """Async methods for every RPC of one service, named like the RPCs."""

    def __init__(self, client: Client, service: ServiceDescriptor) -> None:
        self._methods = {
            rpc.name: StubMethod(
                client,
                service.full_name,
                rpc.name,
                GetMessageClass(rpc.input_type),
                GetMessageClass(rpc.output_type),
            )
            for rpc in service.methods
        }

    def __getattr__(self, name: str) -> StubMethod:
        try:
            return self._methods[name]
        except KeyError:
            raise AttributeError(f"service has no RPC {name!r}") from None
