"""Why the agent refuses or fails a request, in its own terms.

Domain code raises these; the RPC layer (``rpc/status.py``) alone knows which wire status
each one becomes, so nothing below ``rpc/`` depends on the transport.
"""

from __future__ import annotations


class AgentError(Exception):
    """A request the agent cannot serve; ``message`` is what the host is told."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(AgentError):
    """The request itself is wrong, whatever the agent's state."""


class NotFound(AgentError):
    """The request names something (container, process, volume) that does not exist."""


class AlreadyExists(AgentError):
    """The request would create something that exists already."""


class FailedPrecondition(AgentError):
    """The request is valid but the agent's or the guest's state does not allow it now."""


class Unavailable(AgentError):
    """Something the request needs is missing in this guest (an OCI runtime, a tty)."""


class Unimplemented(AgentError):
    """The request asks for something this agent does not do (a field it does not honour)."""


class DeadlineExceeded(AgentError):
    """The work took longer than the host allowed (it may go on in the background)."""


class Internal(AgentError):
    """A component the agent relies on failed (the OCI runtime, say)."""
