"""The one place where the agent's errors become ttRPC statuses.

Every handler object is registered through ``translating``, so a domain error raised
anywhere below a handler reaches the host as its gRPC code with its message unchanged.
Other exceptions pass through untouched: the ttRPC server maps the standard ones (OS errors
such as FileNotFoundError, timeouts) the way containerd's ttrpc does, the rest to UNKNOWN.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from pykata.agent import errors
from pykata.ttrpc import errors as status

CODES: dict[type[errors.AgentError], type[status.TtrpcError]] = {
    errors.InvalidArgument: status.InvalidArgument,
    errors.NotFound: status.NotFound,
    errors.AlreadyExists: status.AlreadyExists,
    errors.FailedPrecondition: status.FailedPrecondition,
    errors.Unavailable: status.Unavailable,
    errors.Unimplemented: status.Unimplemented,
    errors.DeadlineExceeded: status.DeadlineExceeded,
    errors.Internal: status.Internal,
}


def to_status(exc: errors.AgentError) -> status.TtrpcError:
    """The ttRPC exception for ``exc``; a subclass answers as the kind it refines."""
    for kind in type(exc).__mro__:
        cls = CODES.get(kind)
        if cls is not None:
            return cls(exc.message)
    return status.Unknown(exc.message)


Rpc = Callable[[Any], Awaitable[Any]]


def _translated(rpc: Rpc) -> Rpc:
    @functools.wraps(rpc)
    async def call(request: Any) -> Any:
        try:
            return await rpc(request)
        except errors.AgentError as exc:
            raise to_status(exc) from exc

    return call


class Translating:
    """The public coroutine methods of ``handlers``, answering AgentErrors as statuses."""

    def __init__(self, handlers: object) -> None:
        self._handlers = handlers
        for name, method in inspect.getmembers(handlers, inspect.iscoroutinefunction):
            if not name.startswith("_"):
                setattr(self, name, _translated(method))

    def __repr__(self) -> str:
        return f"Translating({self._handlers!r})"
