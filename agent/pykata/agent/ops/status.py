"""Status: the agent's version, uptime, memory, connections, containers and processes."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from pykata.agent import log
from pykata.agent.config import LOG_LEVELS
from pykata.agent.errors import InvalidArgument
from pykata.agent.ops.runtime import AgentRuntime
from pykata.agent.upgrade.state import FORMAT
from pykata.agent.version import API_VERSION, VERSION


@dataclass(frozen=True)
class ProcessInfo:
    exec_id: str
    pid: int
    exited: bool
    exit_status: int
    terminal: bool


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    state: str
    processes: list[ProcessInfo] = field(default_factory=list)


@dataclass(frozen=True)
class AgentStatus:
    agent_version: str
    api_version: str
    pid: int
    uptime_seconds: float
    rss_bytes: int
    agent_connections: int
    ops_connections: int
    sandbox_id: str
    containers: list[ContainerInfo]
    log_level: str
    state_format: int
    generation: int


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def level_name(level: int) -> str:
    return next((name for name, value in LOG_LEVELS.items() if value == level), str(level))


def collect(runtime: AgentRuntime) -> AgentStatus:
    sandbox = runtime.sandbox
    containers = [
        ContainerInfo(
            id=c.id,
            state=c.state.value,
            processes=[
                ProcessInfo(
                    exec_id=p.exec_id,
                    pid=p.pid,
                    exited=p.exit_status is not None,
                    exit_status=p.exit_status or 0,
                    terminal=p.terminal,
                )
                for p in c.processes()
            ],
        )
        for c in sandbox.containers.values()
    ]
    ops = runtime.ops_server
    return AgentStatus(
        agent_version=VERSION,
        api_version=API_VERSION,
        pid=os.getpid(),
        uptime_seconds=time.monotonic() - runtime.started,
        rss_bytes=rss_bytes(),
        agent_connections=runtime.agent_server.connection_count,
        ops_connections=0 if ops is None else ops.connection_count,
        sandbox_id=sandbox.id or "",
        containers=containers,
        log_level=level_name(log.level()),
        state_format=FORMAT,
        generation=runtime.generation,
    )


def set_log_level(name: str) -> tuple[str, str]:
    """(previous level, new level), both by name."""
    level = LOG_LEVELS.get(name.strip().lower())
    if level is None:
        raise InvalidArgument(f"unknown log level {name!r}; one of {', '.join(LOG_LEVELS)}")
    previous = level_name(log.level())
    log.set_level(level)
    return previous, level_name(level)
