"""The switch: stop reading requests, let the short ones finish, hand everything over to the
new code through ``execve`` in this very process.

The pid stays (PID 1 stays init, containers stay our children); what must survive the exec
is made inheritable (the listening sockets, every open connection, the processes' stdio and
pty fds, the OOM notifiers, the state memfd) and the rest closes with it. The new code starts
under the *previous* code's boot.py (the known-good code keeps control of the readiness deadline:
signal handlers do not survive execve, and PID 1 gets no default-fatal signals).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

from pykata.agent import log
from pykata.agent.errors import FailedPrecondition, Internal
from pykata.agent.ops.runtime import AgentRuntime
from pykata.agent.upgrade import interpreter
from pykata.agent.upgrade import state as upgrade_state
from pykata.agent.upgrade.package import VERSIONS, running_code

logger = log.get("upgrade")

# In-flight short calls get this long to finish once reading stopped; else the upgrade is
# called off and the agent serves on.
DRAIN_TIMEOUT = 10.0
DRAIN_POLL = 0.005
BOOT = Path(__file__).with_name("boot.py")


async def drain(runtime: AgentRuntime) -> None:
    """Stop reading requests and wait (bounded) until only resumable calls are in flight."""
    servers = runtime.servers()
    for server in servers:
        server.pause()
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while True:
        await asyncio.sleep(DRAIN_POLL)
        if runtime.sandbox.destroyed.is_set():
            # DestroySandbox was answered meanwhile: the agent is stopping, nothing to hand on.
            raise FailedPrecondition("the sandbox was destroyed: upgrade called off")
        busy = runtime.sandbox.busy()
        unsettled = sum(s.unsettled(upgrade_state.RESUMABLE) for s in servers)
        if not busy and not unsettled:
            return
        if time.monotonic() > deadline:
            for server in servers:
                server.resume()
            what = ", ".join(busy) or f"{unsettled} requests or bytes unsettled"
            raise FailedPrecondition(
                f"in-flight requests did not finish within {DRAIN_TIMEOUT:.0f}s ({what}); "
                "upgrade called off, the agent serves on"
            )


def execute(
    runtime: AgentRuntime, code: Path, ready_timeout: float, record: dict[str, Any]
) -> None:
    """Snapshot, hand over and exec; returns only if the exec itself failed (the agent then
    serves on). Must run right after drain() without yielding to the event loop: nothing may
    change between the snapshot and the exec."""
    state = upgrade_state.capture(runtime)
    servers = {"agent": runtime.agent_server.hand_over()}
    if runtime.ops_server is not None:
        servers["ops"] = runtime.ops_server.hand_over()
    state["servers"] = servers
    sockets = [item["fd"] for s in servers.values() for group in s.values() for item in group]
    stdio = runtime.sandbox.fds()
    state["fds"] = [*sockets, *stdio]
    state["upgrade"] = record
    upgrade_state.stamp_switch(state)
    for fd in stdio:
        os.set_inheritable(fd, True)
    memfd = upgrade_state.to_memfd(state)
    ready_r, ready_w = os.pipe()
    for fd in (memfd, ready_r, ready_w):
        os.set_inheritable(fd, True)
    argv = [
        *interpreter.argv(),
        str(BOOT),
        "--code",
        str(code),
        "--path",
        interpreter.library_path(VERSIONS),
        "--pdeathsig",
        str(interpreter.parent_death_signal()),
        "--previous",
        str(running_code()),
        "--state",
        str(memfd),
        "--ready",
        f"{ready_r},{ready_w}",
        "--deadline",
        str(ready_timeout),
    ]
    logger.info("switching", extra={"code": str(code), "state_bytes": os.fstat(memfd).st_size})
    try:
        os.execv(sys.executable, argv)
    except OSError as exc:
        for fd in state["fds"]:
            os.set_inheritable(fd, False)
        for fd in (memfd, ready_r, ready_w):
            os.close(fd)
        for server in runtime.servers():
            server.resume()
        raise Internal(f"cannot exec the new agent: {exc}") from exc
