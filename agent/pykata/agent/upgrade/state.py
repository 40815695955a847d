"""The state an agent hands to the next one: JSON in a memfd, versioned.

``format`` is the version of this layout. An agent reads the formats in READABLE and says so
in its self-check, so an upgrade to one that cannot read ours is refused before the switch.
File descriptors appear by number (they survive the execve); ``fds`` lists every one of them,
so a rollback can keep them inheritable without understanding the rest.
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import asdict, fields
from typing import Any

from pykata.agent import log
from pykata.agent.config import AgentConfig
from pykata.agent.errors import FailedPrecondition
from pykata.agent.ops.runtime import AgentRuntime
from pykata.agent.version import VERSION

FORMAT = 1
READABLE = (1,)
# Calls that wait for something to happen rather than do something: they stay unanswered
# across an upgrade and the new agent answers them on the same connection and stream.
RESUMABLE = frozenset(
    f"grpc.AgentService/{method}"
    for method in ("WaitProcess", "ReadStdout", "ReadStderr", "GetOOMEvent")
)


def capture(runtime: AgentRuntime) -> dict[str, Any]:
    """The agent's state without its connections (DumpState; the upgrade adds them)."""
    config = asdict(runtime.config)
    config.pop("warnings", None)
    return {
        "format": FORMAT,
        "agent_version": VERSION,
        "pid": os.getpid(),
        "started": runtime.started,
        "generation": runtime.generation,
        "log_level": log.level(),
        "config": config,
        "reaper": runtime.reaper.snapshot(),
        "sandbox": runtime.sandbox.snapshot(),
    }


def describe(runtime: AgentRuntime) -> dict[str, Any]:
    """The state for a person (DumpState): as captured, but each stream's output not read
    yet by its size instead of its bytes (up to 4 MiB each would not fit one answer)."""
    state = capture(runtime)
    for container in state["sandbox"]["containers"]:
        table = container["processes"]
        for process in [container["init"], *table["live"], *table["draining"]]:
            for name in ("stdout", "stderr"):
                stream = process[name] if process is not None else None
                if stream is not None:
                    stream["buffered_bytes"] = len(base64.b64decode(stream.pop("buffer")))
    return state


def restored_config(state: dict[str, Any]) -> AgentConfig:
    """The configuration as the previous agent had it; keys this version does not know are
    left out, ones it added keep their defaults."""
    known = {f.name for f in fields(AgentConfig)} - {"warnings"}
    return AgentConfig(**{k: v for k, v in state["config"].items() if k in known})


def check_format(state: dict[str, Any]) -> None:
    if state.get("format") not in READABLE:
        raise FailedPrecondition(
            f"state format {state.get('format')!r} is not one this agent reads ({READABLE})"
        )


def to_memfd(state: dict[str, Any]) -> int:
    """A memfd holding ``state``, inheritable (it is passed to the next agent by number)."""
    fd = os.memfd_create("kata-agent-state", 0)
    data = json.dumps(state, separators=(",", ":")).encode()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    return fd


def from_fd(fd: int) -> dict[str, Any]:
    """Read (without consuming: a rollback reads it again) and check the state."""
    size = os.fstat(fd).st_size
    chunks, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    state: dict[str, Any] = json.loads(b"".join(chunks))
    check_format(state)
    return state


def stamp_switch(state: dict[str, Any]) -> None:
    """When requests stopped: the new agent reports the pause from it."""
    state["switched_at"] = time.monotonic()
