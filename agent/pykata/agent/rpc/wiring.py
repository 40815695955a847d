"""The ttRPC server with every service the agent answers wired in.

Every handler object goes through status.Translating here: that is how the agent's errors
become wire statuses for all RPCs at once.
"""

from __future__ import annotations

from google.protobuf.descriptor import ServiceDescriptor

from pykata.agent.rpc.containers import ContainerHandlers
from pykata.agent.rpc.files import FileHandlers
from pykata.agent.rpc.guest import GuestHandlers
from pykata.agent.rpc.health import HealthHandlers
from pykata.agent.rpc.metrics import MetricsHandlers
from pykata.agent.rpc.network import NetworkHandlers
from pykata.agent.rpc.processes import ProcessHandlers
from pykata.agent.rpc.sandbox import SandboxHandlers
from pykata.agent.rpc.status import Translating
from pykata.agent.rpc.storages import StorageHandlers
from pykata.agent.sandbox import Sandbox
from pykata.protocols import agent_pb2, health_pb2
from pykata.ttrpc import Server


def services(sandbox: Sandbox) -> list[tuple[ServiceDescriptor, list[Translating]]]:
    """Each service the agent answers, with the handler objects that serve it."""
    agent = [
        SandboxHandlers(sandbox),
        GuestHandlers(sandbox),
        FileHandlers(),
        StorageHandlers(sandbox),
        MetricsHandlers(),
        NetworkHandlers(sandbox),
        ContainerHandlers(sandbox),
        ProcessHandlers(sandbox),
    ]
    return [
        (health_pb2.DESCRIPTOR.services_by_name["Health"], [Translating(HealthHandlers())]),
        (
            agent_pb2.DESCRIPTOR.services_by_name["AgentService"],
            [Translating(handlers) for handlers in agent],
        ),
    ]


def build_server(sandbox: Sandbox) -> Server:
    server = Server()
    for service, handlers in services(sandbox):
        server.register(service, *handlers)
    return server
