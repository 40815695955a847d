"""AgentService RPCs about processes inside containers: exec, signals, wait and stdio."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pykata.agent.sandbox import Sandbox


class ProcessHandlers:
    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
