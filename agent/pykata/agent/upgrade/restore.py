"""The new agent's start after an upgrade's execve (called by the previous code's boot.py):
read the state, take the sandbox, the processes and the connections over, report ready.

Raises only before it reported ready (boot.py then rolls back); from then on it behaves as
``kata-agent`` does: as PID 1 an unexpected error powers the VM off, otherwise an exit code.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from pykata.agent import log, pid1

logger = log.get("upgrade")


class Readiness:
    """Tells boot.py's watchdog the new agent is serving; then the state is let go."""

    def __init__(self, ready_fd: int, state_fd: int) -> None:
        self._ready_fd = ready_fd
        self._state_fd = state_fd
        self.reported = False

    def report(self) -> None:
        if self._ready_fd >= 0:
            os.write(self._ready_fd, b"1")
            os.close(self._ready_fd)
        os.close(self._state_fd)
        self.reported = True


@dataclass
class Restored:
    """What the run loop takes over instead of starting afresh."""

    state: dict[str, Any]
    rolled_back: str
    readiness: Readiness

    @property
    def pause(self) -> float:
        """Seconds since the previous agent stopped reading requests."""
        return time.monotonic() - float(self.state["switched_at"])


def run(state_fd: int, ready_fd: int, rolled_back: str) -> int:
    from pykata.agent import main

    # Before anything imports asyncio (the state module does): keep OpenSSL out, as at boot.
    daemon = main.serving_module()
    from pykata.agent.upgrade import state as upgrade_state

    state = upgrade_state.from_fd(state_fd)
    config = upgrade_state.restored_config(state)
    log.setup(int(state["log_level"]), log_vport=config.log_vport)
    logger.info(
        "restoring" if not rolled_back else "rolled back: restoring",
        extra={"from_version": state["agent_version"], "reason": rolled_back or None},
    )
    if not pid1.is_pid1():
        pid1.set_child_subreaper()
    restored = Restored(state, rolled_back, Readiness(ready_fd, state_fd))
    code = int(daemon.run(config, restored=restored))
    if not pid1.is_pid1():
        return code
    pid1.power_off()
