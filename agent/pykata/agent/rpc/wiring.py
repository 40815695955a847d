"""The agent's ttRPC server, wired in two steps so that it serves before it is all loaded.

First grpc.Health, with little imported: the agent listens and answers health checks (the
shim's first calls) at once. Then the rest of the agent (rpc/agent_service.py: every handler,
the sandbox and all it uses; most of the agent's start-up under TCG) is imported in a thread
while the event loop keeps answering; requests for AgentService that arrive meanwhile wait
for it instead of answering UNIMPLEMENTED. Nothing else imports the RPC handlers.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from pykata.agent.config import AgentConfig
from pykata.agent.reaper import Reaper
from pykata.agent.rpc.health import HealthHandlers
from pykata.agent.rpc.status import Translating
from pykata.protocols import health_pb2
from pykata.ttrpc import Server

if TYPE_CHECKING:
    from pykata.agent.sandbox import Sandbox

HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
AGENT_SERVICE_MODULE = "pykata.agent.rpc.agent_service"


def health_server() -> Server:
    """A server answering grpc.Health, its other services to come (serve_agent)."""
    server = Server()
    server.defer_routing()
    server.register(HEALTH, Translating(HealthHandlers()))
    return server


async def serve_agent(
    server: Server,
    config: AgentConfig,
    reaper: Reaper,
    prerequisite: Awaitable[None] | None = None,
) -> Sandbox:
    """Import the rest of the agent off the event loop, route AgentService to it once that
    and ``prerequisite`` are done."""
    try:
        importing = asyncio.to_thread(importlib.import_module, AGENT_SERVICE_MODULE)
        if prerequisite is not None:
            module, _ = await asyncio.gather(importing, prerequisite)
        else:
            module = await importing
        sandbox: Sandbox = module.serve(server, config, reaper)
    finally:
        # Waiting requests are answered either way (UNIMPLEMENTED if this failed).
        server.routing_complete()
    return sandbox
