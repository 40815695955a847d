"""AgentService RPCs about container lifecycle, resources, stats and OOM events."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pykata.agent.sandbox import Sandbox


class ContainerHandlers:
    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
