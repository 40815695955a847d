"""The RPC methods the CLI can call, taken from the compiled service descriptors.

Names are the bare method names, case-sensitive, as in Kata's agent-ctl (`Check`,
`CreateContainer`, ...): the Health and AgentService method names do not overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from pykata.protocols import agent_pb2, health_pb2

AGENT_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
# Calls that wait for something to happen in the guest: no deadline (--timeout) for them.
BLOCKING = frozenset({"ReadStdout", "ReadStderr", "WaitProcess", "GetOOMEvent"})
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"]


@dataclass(frozen=True)
class Method:
    service: str
    name: str
    request_type: type[Message]
    response_type: type[Message]
    blocking: bool


def _methods(*services: ServiceDescriptor) -> dict[str, Method]:
    table: dict[str, Method] = {}
    for service in services:
        for method in service.methods:
            if method.name in table:
                raise RuntimeError(f"method name {method.name} is served twice")
            table[method.name] = Method(
                service=service.full_name,
                name=method.name,
                request_type=GetMessageClass(method.input_type),
                response_type=GetMessageClass(method.output_type),
                blocking=method.name in BLOCKING,
            )
    return table


METHODS: dict[str, Method] = _methods(HEALTH_SERVICE, AGENT_SERVICE)
