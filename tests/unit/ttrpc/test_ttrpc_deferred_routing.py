"""A server that listens before all its services are registered (Server.defer_routing)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from scripted_health import HEALTH, ScriptedHealth

from pykata.protocols import agent_pb2, health_pb2
from pykata.ttrpc import Client, Server
from pykata.ttrpc.errors import Unimplemented

AGENT = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]


class Guest:
    async def GetGuestDetails(
        self, request: agent_pb2.GuestDetailsRequest
    ) -> agent_pb2.GuestDetailsResponse:
        return agent_pb2.GuestDetailsResponse(agent_details=agent_pb2.AgentDetails(version="v"))


@pytest.fixture
async def deferred(sock_dir: Path) -> AsyncIterator[tuple[Server, str]]:
    server = Server()
    server.defer_routing()
    server.register(HEALTH, ScriptedHealth())
    address = f"unix://{sock_dir}/s.sock"
    await server.listen(address)
    async with server:
        yield server, address


async def details(client: Client) -> agent_pb2.GuestDetailsResponse:
    return await client.call(
        "grpc.AgentService",
        "GetGuestDetails",
        agent_pb2.GuestDetailsRequest(),
        agent_pb2.GuestDetailsResponse,
    )


async def test_registered_services_answer_while_others_wait(
    deferred: tuple[Server, str],
) -> None:
    server, address = deferred
    async with await Client.connect(address) as client:
        waiting = asyncio.ensure_future(details(client))
        health = await client.call(
            "grpc.Health", "Check", health_pb2.CheckRequest(), health_pb2.HealthCheckResponse
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        await asyncio.sleep(0.05)
        assert not waiting.done()
        server.register(AGENT, Guest())
        server.routing_complete()
        assert (await asyncio.wait_for(waiting, 5)).agent_details.version == "v"
        # And later requests go straight through.
        assert (await details(client)).agent_details.version == "v"


async def test_still_unrouted_after_completion_answers_unimplemented(
    deferred: tuple[Server, str],
) -> None:
    server, address = deferred
    async with await Client.connect(address) as client:
        waiting = asyncio.ensure_future(details(client))
        await asyncio.sleep(0.05)
        server.routing_complete()
        with pytest.raises(Unimplemented, match=r"service grpc\.AgentService"):
            await asyncio.wait_for(waiting, 5)
        with pytest.raises(Unimplemented):
            await details(client)
