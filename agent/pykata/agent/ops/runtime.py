"""The running agent as the ops channel sees it and an upgrade hands it over."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pykata.agent.config import AgentConfig
from pykata.agent.reaper import Reaper
from pykata.agent.sandbox import Sandbox
from pykata.ttrpc import Server


@dataclass
class AgentRuntime:
    config: AgentConfig
    sandbox: Sandbox
    reaper: Reaper
    agent_server: Server
    ops_server: Server | None = None
    # CLOCK_MONOTONIC is the machine's: it keeps counting across the upgrade's exec.
    started: float = field(default_factory=time.monotonic)
    # Upgrades this process went through.
    generation: int = 0

    def servers(self) -> list[Server]:
        return [s for s in (self.agent_server, self.ops_server) if s is not None]
