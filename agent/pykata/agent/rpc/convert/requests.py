"""Request fields outside the OCI spec: string users, shared mounts, and the fields the agent
refuses."""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.message import Message

from pykata.agent.container.shared_mounts import SharedMount
from pykata.agent.errors import Unimplemented
from pykata.agent.process.user import StringUser
from pykata.protocols import agent_pb2

_PASSFD = "passfd I/O (agent.passfd_listener_port) is not supported: stdio goes through the "
_PASSFD += "ReadStdout/WriteStdin RPCs"
# Fields the agent does not honour, and why: a value in them is refused rather than ignored.
UNHONOURED = {
    "stdin_port": _PASSFD,
    "stdout_port": _PASSFD,
    "stderr_port": _PASSFD,
}


def refuse_unhonoured(request: Message) -> None:
    """UNIMPLEMENTED naming the first field of UNHONOURED that ``request`` sets."""
    for field in request.DESCRIPTOR.fields:
        reason = UNHONOURED.get(field.name)
        if reason is None:
            continue
        value = getattr(request, field.name)
        if len(value) if field.is_repeated else value:
            raise Unimplemented(f"{request.DESCRIPTOR.name}.{field.name}: {reason}")


def string_user(message: agent_pb2.StringUser) -> StringUser | None:
    if not (message.uid or message.gid or message.additionalGids):
        return None
    return StringUser(message.uid, message.gid, tuple(message.additionalGids))


def shared_mounts(messages: Iterable[agent_pb2.SharedMount]) -> list[SharedMount]:
    return [SharedMount(m.name, m.src_ctr, m.src_path, m.dst_ctr, m.dst_path) for m in messages]
