"""The agent's ttRPC server, wired in two steps so that it serves before it is all loaded.

First grpc.Health, with little imported: the agent listens and answers health checks (the
shim's first calls) at once. Then the rest of the agent (rpc/agent_service.py: every handler,
the sandbox and all it uses; most of the agent's start-up under TCG) is imported in a thread
while the event loop keeps answering; requests for AgentService that arrive meanwhile wait
for it instead of answering UNIMPLEMENTED. The ops channel's server (pykata.ops.v1.Ops) is
built here too, its modules loaded only when it is configured. Nothing else imports the RPC
handlers.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from pykata.agent.config import AgentConfig
from pykata.agent.reaper import Reaper
from pykata.agent.rpc.health import HealthHandlers
from pykata.agent.rpc.status import Translating
from pykata.protocols import health_pb2
from pykata.ttrpc import Server

if TYPE_CHECKING:
    from pykata.agent.ops.runtime import AgentRuntime
    from pykata.agent.sandbox import Sandbox
    from pykata.agent.upgrade.manager import UpgradeStatus

HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
AGENT_SERVICE_MODULE = "pykata.agent.rpc.agent_service"
# The ops channel serves one operator tool or two, never the shim: small limits of its own,
# so that it neither competes with the agent API's nor is starved by it. Its frames carry
# upgrade chunks (1 MiB by default).
OPS_MAX_CONNECTIONS = 8
OPS_MAX_INFLIGHT = 16
OPS_MAX_BUFFERED = 16 << 20


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
    restore: dict[str, Any] | None = None,
) -> Sandbox:
    """Import the rest of the agent off the event loop, route AgentService to it once that
    and ``prerequisite`` are done; ``restore``: the sandbox as an upgraded agent's
    predecessor handed it over."""
    try:
        importing = asyncio.to_thread(importlib.import_module, AGENT_SERVICE_MODULE)
        if prerequisite is not None:
            module, _ = await asyncio.gather(importing, prerequisite)
        else:
            module = await importing
        sandbox: Sandbox = module.serve(server, config, reaper, restore)
    finally:
        # Waiting requests are answered either way (UNIMPLEMENTED if this failed).
        server.routing_complete()
    return sandbox


def build_ops_server(runtime: AgentRuntime, upgrade: UpgradeStatus | None = None) -> Server:
    """The ops channel's server (pykata.ops.v1.Ops); ``upgrade``: the status an upgraded
    agent reports. Its modules load here, only when the channel is configured."""
    from pykata.agent.rpc.ops import OpsHandlers
    from pykata.agent.upgrade.manager import UpgradeManager
    from pykata.protocols import ops_pb2

    server = Server(
        max_connections=OPS_MAX_CONNECTIONS,
        max_inflight_per_connection=OPS_MAX_INFLIGHT,
        max_buffered_bytes=OPS_MAX_BUFFERED,
    )
    handlers = OpsHandlers(runtime, UpgradeManager(runtime, upgrade))
    server.register(ops_pb2.DESCRIPTOR.services_by_name["Ops"], Translating(handlers))
    return server
