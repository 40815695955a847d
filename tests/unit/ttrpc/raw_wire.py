"""Speaking ttRPC by hand, to send what a well-behaved client never would."""

from __future__ import annotations

import asyncio

from pykata.protocols import ttrpc_pb2
from pykata.ttrpc.addresses import UnixAddress, parse_address
from pykata.ttrpc.framing import HEADER, HEADER_SIZE


def frame(stream_id: int, frame_type: int, payload: bytes, flags: int = 0) -> bytes:
    return HEADER.pack(len(payload), stream_id, frame_type, flags) + payload


def request(service: str, method: str, payload: bytes = b"") -> bytes:
    return ttrpc_pb2.Request(service=service, method=method, payload=payload).SerializeToString()


async def open_raw(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parsed = parse_address(address)
    assert isinstance(parsed, UnixAddress)
    return await asyncio.open_unix_connection(parsed.sockaddr)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, ttrpc_pb2.Response]:
    """The next frame, which must be a response: (stream id, Response)."""
    async with asyncio.timeout(5):
        header = await reader.readexactly(HEADER_SIZE)
        length, stream_id, frame_type, _flags = HEADER.unpack(header)
        assert frame_type == 2, f"frame type {frame_type}, want response"
        return stream_id, ttrpc_pb2.Response.FromString(await reader.readexactly(length))
