"""Handing a serving ttRPC server over to another one (what the agent's upgrade does across
an execve, here within one process): the listener, open connections, a frame half received,
requests sent while paused and a long call in flight all go on with the new server."""

from __future__ import annotations

import asyncio
import os
import secrets
from typing import Any

from raw_wire import frame, open_raw, read_response, request
from scripted_health import HEALTH, ScriptedHealth

from pykata.protocols import health_pb2
from pykata.ttrpc import Client, Server

LONG = frozenset({"grpc.Health/Check"})


class Answering(ScriptedHealth):
    """The new server's handler: "block" answers at once (so a re-dispatched long call
    shows up here and completes)."""

    async def Check(self, request: health_pb2.CheckRequest) -> health_pb2.HealthCheckResponse:
        await self._record(self.started, request.service)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def with_own_fds(state: dict[str, Any]) -> dict[str, Any]:
    """What an exec gives the next process: the same sockets (here: duplicated fds, so that
    closing the old server's objects leaves them open)."""
    for group in ("listeners", "connections"):
        for item in state[group]:
            item["fd"] = os.dup(item["fd"])
    return state


async def test_a_paused_server_hands_everything_over() -> None:
    address = f"unix://@ttrpc-handover-{secrets.token_hex(4)}"
    old_handler, new_handler = ScriptedHealth(), Answering()
    old = Server()
    old.register(HEALTH, old_handler)
    await old.listen(address)
    client = await Client.connect(address)
    raw_reader, raw_writer = await open_raw(address)
    health = client.stub(HEALTH)
    long_call = asyncio.ensure_future(health.Check(health_pb2.CheckRequest(service="block")))
    await old_handler.wait_started("block")
    half = frame(1, 1, request("grpc.Health", "Version", b"\x0a\x04half"))
    raw_writer.write(half[:10])
    await raw_writer.drain()
    await asyncio.sleep(0.05)  # the old server has read the first half

    old.pause()
    sent_while_paused = asyncio.ensure_future(
        health.Version(health_pb2.CheckRequest(service="later"))
    )
    raw_writer.write(half[10:])
    await raw_writer.drain()
    await asyncio.sleep(0.05)
    assert not sent_while_paused.done()
    assert old.unsettled(LONG) == 0
    assert old.unsettled(frozenset()) == 1  # the long call, unless it may be carried over

    state = with_own_fds(old.hand_over())
    (pending,) = [p for conn in state["connections"] for p in conn["pending"]]
    assert pending["route"] == "grpc.Health/Check"
    await old.close()
    assert old_handler.cancelled == ["block"]

    new = Server()
    new.register(HEALTH, new_handler)
    await new.take_over(state)
    try:
        assert (await asyncio.wait_for(long_call, 5)).status == 1
        assert new_handler.started == ["block"]
        assert (await asyncio.wait_for(sent_while_paused, 5)).agent_version == "later"
        stream_id, response = await read_response(raw_reader)
        assert stream_id == 1
        assert health_pb2.VersionCheckResponse.FromString(response.payload).agent_version == (
            "half"
        )
        # The listener too: a new client is served by the new server.
        async with await Client.connect(address) as fresh:
            version = await fresh.stub(HEALTH).Version(health_pb2.CheckRequest(service="new"))
            assert version.agent_version == "new"
    finally:
        raw_writer.close()
        await client.close()
        await new.close()


async def test_resume_after_a_called_off_hand_over_reads_again() -> None:
    address = f"unix://@ttrpc-handover-{secrets.token_hex(4)}"
    server = Server()
    server.register(HEALTH, ScriptedHealth())
    await server.listen(address)
    async with server, await Client.connect(address) as client:
        server.pause()
        call = asyncio.ensure_future(
            client.stub(HEALTH).Version(health_pb2.CheckRequest(service="x"))
        )
        await asyncio.sleep(0.05)
        assert not call.done()
        server.resume()
        assert (await asyncio.wait_for(call, 5)).agent_version == "x"
