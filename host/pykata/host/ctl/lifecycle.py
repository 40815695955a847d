"""`ps`, `stop` and `destroy`: the containers `run` recorded, and tearing things down."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from pykata.host.ctl.run import remove_container
from pykata.host.ctl.session import Session
from pykata.host.ctl.share import unshare_rootfs
from pykata.host.ctl.state import StateFile, TargetState
from pykata.protocols import agent_pb2
from pykata.ttrpc.errors import NotFound

POLL_INTERVAL = 0.1


def owner_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def format_ps(state: TargetState) -> str:
    lines = [f"sandbox: {state.sandbox_id or '-'}"]
    header = f"{'CONTAINER ID':<18} {'CREATED':<20} {'STATUS':<9} COMMAND"
    lines.append(header)
    for record in sorted(state.containers.values(), key=lambda r: r.created):
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        if not owner_alive(record.owner_pid):
            status = "orphaned"
        else:
            status = "running" if record.started else "creating"
        lines.append(f"{record.id:<18} {created:<20} {status:<9} {' '.join(record.args)}")
    return "\n".join(lines)


async def stop_container(
    session: Session, state_file: StateFile, container_id: str, grace: float
) -> None:
    """SIGTERM, then SIGKILL to every process after `grace` seconds. The `run` streaming the
    container sees it exit and removes it; when that `run` is gone, stop removes it itself."""
    await signal_container(session, container_id, signal.SIGTERM)
    if await wait_removed(state_file, container_id, grace):
        return
    await signal_container(session, container_id, signal.SIGKILL)
    if await wait_removed(state_file, container_id, grace):
        return
    await remove_container(session, state_file, container_id)


async def signal_container(session: Session, container_id: str, signum: int) -> None:
    # An empty exec_id with SIGKILL reaches every process of the container (Kata semantics).
    exec_id = "" if signum == signal.SIGKILL else container_id
    try:
        await session.agent_empty(
            "SignalProcess",
            agent_pb2.SignalProcessRequest(
                container_id=container_id, exec_id=exec_id, signal=signum
            ),
        )
    except NotFound:
        return


async def wait_removed(state_file: StateFile, container_id: str, grace: float) -> bool:
    """True once the owning `run` has removed the container; False when it cannot."""
    deadline = time.monotonic() + grace
    while True:
        record = state_file.load().containers.get(container_id)
        if record is None:
            return True
        if not owner_alive(record.owner_pid) or time.monotonic() >= deadline:
            return False
        await asyncio.sleep(POLL_INTERVAL)


async def destroy_sandbox(session: Session, state_file: StateFile) -> None:
    """DestroySandbox (the agent tears every container down), then undo the host mounts."""
    await session.agent_empty("DestroySandbox", agent_pb2.DestroySandboxRequest())
    state = state_file.load()
    for record in state.containers.values():
        unshare_rootfs(Path(record.mount))
    state_file.remove()
