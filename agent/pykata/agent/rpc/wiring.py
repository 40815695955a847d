"""The ttRPC server with every service the agent answers wired in.

Every handler object goes through status.Translating here: that is how the agent's errors
become wire statuses for all RPCs at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from pykata.agent.ops.runtime import AgentRuntime
    from pykata.agent.upgrade.manager import UpgradeStatus

# The ops channel serves one operator tool or two, never the shim: small limits of its own,
# so that it neither competes with the agent API's nor is starved by it. Its frames carry
# upgrade chunks (1 MiB by default).
OPS_MAX_CONNECTIONS = 8
OPS_MAX_INFLIGHT = 16
OPS_MAX_BUFFERED = 16 << 20


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


def ops_services(
    runtime: AgentRuntime, upgrade: UpgradeStatus | None = None
) -> list[tuple[ServiceDescriptor, list[Translating]]]:
    """The ops channel's service (pykata.ops.v1.Ops); ``upgrade``: the status an upgraded
    agent reports. Its modules load here, only when the channel is configured."""
    from pykata.agent.rpc.ops import OpsHandlers
    from pykata.agent.upgrade.manager import UpgradeManager
    from pykata.protocols import ops_pb2

    handlers = OpsHandlers(runtime, UpgradeManager(runtime, upgrade))
    return [(ops_pb2.DESCRIPTOR.services_by_name["Ops"], [Translating(handlers)])]


def build_ops_server(runtime: AgentRuntime, upgrade: UpgradeStatus | None = None) -> Server:
    server = Server(
        max_connections=OPS_MAX_CONNECTIONS,
        max_inflight_per_connection=OPS_MAX_INFLIGHT,
        max_buffered_bytes=OPS_MAX_BUFFERED,
    )
    for service, handlers in ops_services(runtime, upgrade):
        server.register(service, *handlers)
    return server
