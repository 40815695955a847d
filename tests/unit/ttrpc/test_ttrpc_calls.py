"""Server and client over a unix socket: routing, errors, deadlines, concurrency."""

from __future__ import annotations

import asyncio

import pytest
from raw_wire import frame, open_raw, read_response
from scripted_health import HEALTH, ScriptedHealth

from pykata.protocols import health_pb2, ttrpc_pb2
from pykata.ttrpc import Client, Server
from pykata.ttrpc.errors import (
    Code,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    TtrpcError,
    Unavailable,
    Unimplemented,
    Unknown,
)
from pykata.ttrpc.framing import MAX_PAYLOAD

SERVING = health_pb2.HealthCheckResponse.SERVING


def check(script: str = "") -> health_pb2.CheckRequest:
    return health_pb2.CheckRequest(service=script)


async def test_check_and_version(server_address: str) -> None:
    async with await Client.connect(server_address) as client:
        resp = await client.call("grpc.Health", "Check", check(), health_pb2.HealthCheckResponse)
        assert resp.status == SERVING
        version = await client.call(
            "grpc.Health", "Version", check("v1"), health_pb2.VersionCheckResponse
        )
        assert (version.grpc_version, version.agent_version) == ("test", "v1")


async def test_stub_has_typed_methods(server_address: str) -> None:
    async with await Client.connect(server_address) as client:
        health = client.stub(HEALTH)
        resp = await health.Check(check())
        assert isinstance(resp, health_pb2.HealthCheckResponse)
        version = await health.Version(check("x"))
        assert isinstance(version, health_pb2.VersionCheckResponse)
        with pytest.raises(InvalidArgument, match="takes CheckRequest"):
            await health.Check(health_pb2.HealthCheckResponse())
        with pytest.raises(AttributeError):
            health.Nope  # noqa: B018


async def test_large_messages_up_to_the_limit(server_address: str) -> None:
    async with await Client.connect(server_address) as client:
        health = client.stub(HEALTH)
        big = await health.Version(check("big:3000000"))
        assert len(big.agent_version) == 3_000_000
        echoed = await health.Version(check("y" * 3_000_000))
        assert echoed.agent_version == "y" * 3_000_000
        with pytest.raises(ResourceExhausted, match="exceeds maximum message size"):
            await health.Version(check(f"big:{MAX_PAYLOAD}"))
        with pytest.raises(ResourceExhausted, match="request of"):
            await health.Version(check("z" * MAX_PAYLOAD))
        assert (await health.Check(check())).status == SERVING


async def test_unknown_service_and_method(server_address: str) -> None:
    async with await Client.connect(server_address) as client:
        with pytest.raises(Unimplemented, match=r"service grpc\.Nope"):
            await client.call("grpc.Nope", "Check", check(), health_pb2.HealthCheckResponse)
        with pytest.raises(Unimplemented, match="method Nope"):
            await client.call("grpc.Health", "Nope", check(), health_pb2.HealthCheckResponse)


async def test_unprovided_rpc_is_unimplemented(sock_dir: object) -> None:
    class OnlyCheck:
        async def Check(self, request: health_pb2.CheckRequest) -> health_pb2.HealthCheckResponse:
            return health_pb2.HealthCheckResponse(status=SERVING)

    server = Server()
    server.register(HEALTH, OnlyCheck())
    await server.listen("unix://@pykata-test-only-check")
    async with server, await Client.connect("unix://@pykata-test-only-check") as client:
        assert (await client.stub(HEALTH).Check(check())).status == SERVING
        with pytest.raises(Unimplemented, match=r"grpc\.Health/Version is not implemented"):
            await client.stub(HEALTH).Version(check())


def test_register_rejects_sync_handlers_and_duplicates() -> None:
    class Sync:
        def Check(self, request: health_pb2.CheckRequest) -> health_pb2.HealthCheckResponse:
            return health_pb2.HealthCheckResponse()

    server = Server()
    with pytest.raises(TypeError, match="not async"):
        server.register(HEALTH, Sync())
    server.register(HEALTH, ScriptedHealth())
    with pytest.raises(ValueError, match="already registered"):
        server.register(HEALTH, ScriptedHealth())


@pytest.mark.parametrize("code", [c for c in Code if c != Code.OK])
async def test_typed_errors_round_trip(server_address: str, code: Code) -> None:
    async with await Client.connect(server_address) as client:
        with pytest.raises(TtrpcError) as info:
            await client.stub(HEALTH).Check(check(f"raise:{int(code)}:went wrong"))
        assert info.value.code == code
        assert info.value.message == "went wrong"


async def test_plain_exception_maps_to_unknown_and_server_keeps_serving(
    server_address: str,
) -> None:
    async with await Client.connect(server_address) as client:
        with pytest.raises(Unknown, match="handler bug"):
            await client.stub(HEALTH).Check(check("crash"))
        assert (await client.stub(HEALTH).Check(check())).status == SERVING


async def test_os_errors_map_like_go(sock_dir: object) -> None:
    class Missing:
        async def Check(self, request: health_pb2.CheckRequest) -> health_pb2.HealthCheckResponse:
            raise FileNotFoundError(2, "No such file", request.service)

    server = Server()
    server.register(HEALTH, Missing())
    await server.listen("unix://@pykata-test-missing")
    async with server, await Client.connect("unix://@pykata-test-missing") as client:
        with pytest.raises(NotFound, match="/nope"):
            await client.stub(HEALTH).Check(check("/nope"))


async def test_wrong_response_type_is_an_error(sock_dir: object) -> None:
    class Wrong:
        async def Check(self, request: health_pb2.CheckRequest) -> health_pb2.HealthCheckResponse:
            return health_pb2.VersionCheckResponse()  # type: ignore[return-value]

    server = Server()
    server.register(HEALTH, Wrong())
    await server.listen("unix://@pykata-test-wrong")
    async with server, await Client.connect("unix://@pykata-test-wrong") as client:
        with pytest.raises(Unknown, match="returned VersionCheckResponse"):
            await client.stub(HEALTH).Check(check())


async def test_slow_call_does_not_delay_quick_ones(
    server_address: str, handler: ScriptedHealth
) -> None:
    async with await Client.connect(server_address) as client:
        health = client.stub(HEALTH)
        slow = asyncio.create_task(health.Check(check("sleep:2")))
        await handler.wait_started("sleep:2")
        quick = [await health.Check(check()) for _ in range(50)]
        quick += await asyncio.gather(*(health.Check(check()) for _ in range(50)))
        assert all(r.status == SERVING for r in quick)
        assert not slow.done(), "the 2-second call finished before the 100 quick ones"
        assert (await slow).status == SERVING


async def test_server_deadline_from_timeout_nano(
    server_address: str, handler: ScriptedHealth
) -> None:
    async with await Client.connect(server_address) as client:
        # The server's deadline fires at 0.2 s; the client's own at 0.2 s too, so accept
        # either side winning the race, but the server must have cancelled the handler.
        with pytest.raises(DeadlineExceeded):
            await client.stub(HEALTH).Check(check("block"), timeout=0.2)
        await handler.wait_cancelled("block")


async def test_server_answers_deadline_exceeded(server_address: str) -> None:
    reader, writer = await open_raw(server_address)
    request = ttrpc_pb2.Request(
        service="grpc.Health",
        method="Check",
        payload=check("block").SerializeToString(),
        timeout_nano=50_000_000,
    )
    writer.write(frame(1, 1, request.SerializeToString()))
    stream_id, response = await read_response(reader)
    assert stream_id == 1
    assert response.status.code == Code.DEADLINE_EXCEEDED
    writer.close()


async def test_disconnect_cancels_in_flight_handlers(
    server_address: str, handler: ScriptedHealth
) -> None:
    client = await Client.connect(server_address)
    call = asyncio.create_task(client.stub(HEALTH).Check(check("block")))
    await handler.wait_started("block")
    await client.close()
    await handler.wait_cancelled("block")
    with pytest.raises(Unavailable):
        await call


async def test_server_close_cancels_handlers_and_fails_calls(
    sock_dir: object, handler: ScriptedHealth
) -> None:
    server = Server()
    server.register(HEALTH, handler)
    await server.listen("unix://@pykata-test-close")
    client = await Client.connect("unix://@pykata-test-close")
    call = asyncio.create_task(client.stub(HEALTH).Check(check("block")))
    await handler.wait_started("block")
    serving = asyncio.create_task(server.serve_forever())
    await server.close()
    await asyncio.wait_for(serving, 5)
    assert handler.cancelled == ["block"]
    with pytest.raises(Unavailable):
        await call
    with pytest.raises(Unavailable):
        await client.stub(HEALTH).Check(check())
    await client.close()
