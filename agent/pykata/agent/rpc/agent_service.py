"""grpc.AgentService wired to the sandbox: most of the agent, imported once it listens.

Every handler object goes through status.Translating here: that is how the agent's errors
become wire statuses for all RPCs at once.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import ServiceDescriptor

from pykata.agent.config import AgentConfig
from pykata.agent.reaper import Reaper
from pykata.agent.rpc.containers import ContainerHandlers
from pykata.agent.rpc.files import FileHandlers
from pykata.agent.rpc.guest import GuestHandlers
from pykata.agent.rpc.metrics import MetricsHandlers
from pykata.agent.rpc.network import NetworkHandlers
from pykata.agent.rpc.processes import ProcessHandlers
from pykata.agent.rpc.sandbox import SandboxHandlers
from pykata.agent.rpc.status import Translating
from pykata.agent.rpc.storages import StorageHandlers
from pykata.agent.sandbox import Sandbox
from pykata.protocols import agent_pb2
from pykata.ttrpc import Server

SERVICE: ServiceDescriptor = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]


def handlers(sandbox: Sandbox) -> list[Translating]:
    """The handler objects that serve AgentService, each RPC by the first that has it."""
    return [
        Translating(handler)
        for handler in (
            SandboxHandlers(sandbox),
            GuestHandlers(sandbox),
            FileHandlers(),
            StorageHandlers(sandbox),
            MetricsHandlers(),
            NetworkHandlers(sandbox),
            ContainerHandlers(sandbox),
            ProcessHandlers(sandbox),
        )
    ]


def serve(
    server: Server, config: AgentConfig, reaper: Reaper, restore: dict[str, Any] | None = None
) -> Sandbox:
    """The sandbox (``restore``: as an upgraded agent's predecessor handed it over), with
    AgentService routed to it on ``server``."""
    sandbox = Sandbox(config, reaper)
    if restore is not None:
        sandbox.restore(restore)
    server.register(SERVICE, *handlers(sandbox))
    return sandbox
