"""SIGTERM to an agent that is not PID 1 (systemd stopping it): it cleans its sandbox up."""

from __future__ import annotations

import signal
import subprocess
from typing import Any

from pykata.agent.mount import mount_points
from pykata.protocols import agent_pb2

SCRATCH = "/run/kata-containers/sandbox/ephemeral/pykata-signal-test"


def mounted(path: str) -> bool:
    return any(point == path for point, _ in mount_points())


async def test_sigterm_tears_the_sandbox_down(
    agent: Any, agent_process: subprocess.Popen[bytes]
) -> None:
    await agent.CreateSandbox(
        agent_pb2.CreateSandboxRequest(
            hostname="signalled",
            storages=[agent_pb2.Storage(driver="ephemeral", fstype="tmpfs", mount_point=SCRATCH)],
        )
    )
    assert mounted(SCRATCH)
    agent_process.send_signal(signal.SIGTERM)
    assert agent_process.wait(timeout=15) == 0
    assert not mounted(SCRATCH)
    assert not any(
        point.startswith(f"/run/kata-containers/sandbox/ns/{agent_process.pid}/")
        for point, _ in mount_points()
    )
