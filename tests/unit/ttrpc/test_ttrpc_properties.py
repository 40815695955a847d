"""Property tests: random bytes never hurt the server; random valid requests round-trip.

The server runs on its own event loop thread for the whole test, and hypothesis drives it
with plain blocking sockets, so one server sees every example in sequence.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pykata.protocols import health_pb2, ttrpc_pb2
from pykata.ttrpc import Server
from pykata.ttrpc.errors import Code
from pykata.ttrpc.framing import (
    HEADER,
    HEADER_SIZE,
    MAX_PAYLOAD,
    FrameDecoder,
    Refused,
    encode_frame,
)

SHARED_SERVER = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]


class EchoHealth:
    async def Check(self, request: health_pb2.CheckRequest) -> health_pb2.HealthCheckResponse:
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    async def Version(self, request: health_pb2.CheckRequest) -> health_pb2.VersionCheckResponse:
        return health_pb2.VersionCheckResponse(agent_version=request.service)


class ThreadedServer:
    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.loop_errors: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(lambda _loop, ctx: self.loop_errors.append(ctx))
        self._server = Server()
        self._server.register(HEALTH, EchoHealth())
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        self._run(self._server.listen(f"unix://{self.path}"))
        return self

    def __exit__(self, *exc: object) -> None:
        self._run(self._server.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def _run(self, coro: Any) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(self.path)
        return sock


@pytest.fixture
def threaded(sock_dir: Path) -> Iterator[ThreadedServer]:
    with ThreadedServer(sock_dir / "p.sock") as server:
        yield server
        assert server.loop_errors == []


def read_frame(sock: socket.socket) -> tuple[int, int, bytes]:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "server closed the connection"
            data += chunk
        return data

    length, stream_id, frame_type, _ = HEADER.unpack(exactly(HEADER_SIZE))
    return stream_id, frame_type, exactly(length)


def version_call(server: ThreadedServer, stream_id: int, text: str) -> None:
    request = ttrpc_pb2.Request(
        service="grpc.Health",
        method="Version",
        payload=health_pb2.CheckRequest(service=text).SerializeToString(),
    )
    with server.connect() as sock:
        sock.sendall(encode_frame(stream_id, 1, request.SerializeToString()))
        got_id, frame_type, body = read_frame(sock)
    response = ttrpc_pb2.Response.FromString(body)
    assert (got_id, frame_type, response.status.code) == (stream_id, 2, 0)
    assert health_pb2.VersionCheckResponse.FromString(response.payload).agent_version == text


@SHARED_SERVER
@given(garbage=st.binary(max_size=2048), header_like=st.booleans())
def test_random_bytes_never_stop_the_server(
    threaded: ThreadedServer, garbage: bytes, header_like: bool
) -> None:
    if header_like:
        # Random bytes behind a plausible header reach the Request decoder, not just framing.
        garbage = encode_frame(1, 1, garbage[: len(garbage) // 2]) + garbage
    with threaded.connect() as sock:
        sock.sendall(garbage)
        sock.shutdown(socket.SHUT_WR)
        # Whatever comes back must be well-formed response frames on the same connection.
        with sock.makefile("rb") as replies:
            decoder = FrameDecoder()
            for _, frame_type, _, _ in decoder.feed(replies.read()):
                assert frame_type == 2
            assert decoder.buffered == 0
    version_call(threaded, 1, "still serving")


@SHARED_SERVER
@given(
    text=st.text(max_size=300),
    stream_id=st.integers(min_value=0, max_value=0x7FFFFFFF).map(lambda n: 2 * n + 1),
)
def test_valid_requests_round_trip(threaded: ThreadedServer, text: str, stream_id: int) -> None:
    version_call(threaded, stream_id, text)


@SHARED_SERVER
@given(
    service=st.text(max_size=40),
    method=st.text(max_size=40),
    payload=st.binary(max_size=64),
    timeout_nano=st.integers(min_value=0, max_value=2**62),
    metadata=st.lists(st.tuples(st.text(max_size=10), st.text(max_size=10)), max_size=3),
)
def test_any_valid_request_gets_one_answer(
    threaded: ThreadedServer,
    service: str,
    method: str,
    payload: bytes,
    timeout_nano: int,
    metadata: list[tuple[str, str]],
) -> None:
    request = ttrpc_pb2.Request(
        service=service,
        method=method,
        payload=payload,
        timeout_nano=timeout_nano,
        metadata=[ttrpc_pb2.KeyValue(key=k, value=v) for k, v in metadata],
    )
    with threaded.connect() as sock:
        sock.sendall(encode_frame(3, 1, request.SerializeToString()))
        stream_id, frame_type, body = read_frame(sock)
    status = ttrpc_pb2.Response.FromString(body).status
    assert (stream_id, frame_type) == (3, 2)
    if service != "grpc.Health" or method not in ("Check", "Version"):
        assert status.code == Code.UNIMPLEMENTED
    else:
        assert status.code in (Code.OK, Code.INTERNAL)


frames = st.lists(
    st.tuples(
        st.integers(0, 0xFFFFFFFF),
        st.integers(0, 255),
        st.integers(0, 255),
        st.binary(max_size=300),
    ),
    max_size=8,
)


@given(frames=frames, cuts=st.lists(st.integers(0, 3000), max_size=6))
def test_decoder_is_split_invariant(
    frames: list[tuple[int, int, int, bytes]], cuts: list[int]
) -> None:
    data = b"".join(
        encode_frame(sid, ftype, payload, flags) for sid, ftype, flags, payload in frames
    )
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    decoder = FrameDecoder(max_payload=200)
    out = []
    for start, stop in itertools.pairwise(bounds):
        out += decoder.feed(data[start:stop])
    expected = [(sid, t, f, p if len(p) <= 200 else Refused.OVERSIZED) for sid, t, f, p in frames]
    assert out == expected
    assert decoder.buffered == 0
    assert MAX_PAYLOAD > 200
