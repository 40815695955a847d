"""The method table a server routes requests by, built from proto service descriptors."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

Handler = Callable[[Message], Awaitable[Message]]


@dataclass(frozen=True, slots=True)
class Method:
    name: str
    handler: Handler
    request_type: type[Message]
    response_type: type[Message]


class ServiceSet:
    """Maps wire service names (``<package>.<Service>``) and method names to handlers."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, Method]] = {}
        self._declared: dict[str, frozenset[str]] = {}

    def register(self, service: ServiceDescriptor, *handlers: object) -> None:
        """Route each RPC of service to the first handler object with a method of its name.

        RPCs none of them provide stay unregistered and answer UNIMPLEMENTED. A public
        coroutine method named like an RPC (CamelCase) that the service does not declare is
        refused: a misspelt handler would otherwise serve nothing, silently.
        """
        name = service.full_name
        if name in self.services:
            raise ValueError(f"service {name} is already registered")
        declared = frozenset(rpc.name for rpc in service.methods)
        for obj in handlers:
            for attr in dir(obj):
                if attr in declared or not attr[:1].isupper():
                    continue
                if inspect.iscoroutinefunction(getattr(obj, attr, None)):
                    raise ValueError(f"{name}: handler {obj!r} has {attr}, which is not an RPC")
        self._declared[name] = declared
        methods: dict[str, Method] = {}
        for rpc in service.methods:
            if rpc.client_streaming or rpc.server_streaming:
                raise ValueError(f"{name}/{rpc.name}: streaming RPCs are not supported")
            for obj in handlers:
                handler = getattr(obj, rpc.name, None)
                if handler is None:
                    continue
                if not inspect.iscoroutinefunction(handler):
                    raise TypeError(f"{name}/{rpc.name}: handler {handler!r} is not async")
                methods[rpc.name] = Method(
                    f"/{name}/{rpc.name}",
                    handler,
                    GetMessageClass(rpc.input_type),
                    GetMessageClass(rpc.output_type),
                )
                break
        self.services[name] = methods

    def unrouted(self, service: str, method: str) -> str:
        """The UNIMPLEMENTED message for a request no handler serves: Go's plain wording
        for unknown names, and a clearer one for an RPC of the service we do not implement."""
        if service not in self.services:
            return f"service {service}"
        if method in self._declared[service]:
            return f"{service}/{method} is not implemented by this server"
        return f"method {method}"
