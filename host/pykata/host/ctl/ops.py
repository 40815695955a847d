"""`kata-agent-ctl ops …`: the agent's ops channel (pykata.ops.v1.Ops, docs/ops.md): status,
log level, state dump, and the hot upgrade (upload in chunks, then wait for the outcome)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

from pykata.protocols import ops_pb2
from pykata.ttrpc import Client

OPS_SERVICE = ops_pb2.DESCRIPTOR.services_by_name["Ops"]
CHUNK = 1 << 20
# Phases an upgrade passes through; any other is where it ended.
IN_PROGRESS = ("receiving", "checking", "switching")
POLL_INTERVAL = 0.05


class UpgradeFailed(Exception):
    def __init__(self, status: ops_pb2.UpgradeStatusResponse) -> None:
        super().__init__(f"upgrade {status.phase}: {status.message}")
        self.status = status


def ops_stub(client: Client) -> Any:
    return client.stub(OPS_SERVICE)


async def send_upgrade(
    ops: Any,
    artifact: bytes,
    *,
    ready_timeout: float = 0,
    chunk: int = CHUNK,
    call_timeout: float | None = 120.0,
) -> ops_pb2.UpgradeStatusResponse:
    """Stream the artifact in chunks, the last one committing; the agent's answer to the
    commit (phase "switching" once the new code passed its self-check)."""
    digest = hashlib.sha256(artifact).hexdigest()
    offset = 0
    while True:
        data = artifact[offset : offset + chunk]
        last = offset + len(data) >= len(artifact)
        request = ops_pb2.UpgradeRequest(
            sha256=digest,
            size=len(artifact),
            offset=offset,
            data=data,
            commit=last,
            ready_timeout_seconds=int(ready_timeout),
        )
        status: ops_pb2.UpgradeStatusResponse = await ops.Upgrade(request, timeout=call_timeout)
        offset += len(data)
        if last:
            return status


async def send_upgrade_path(
    ops: Any, guest_path: str, sha256: str, *, ready_timeout: float = 0
) -> ops_pb2.UpgradeStatusResponse:
    """Upgrade from a file the guest can read (e.g. on the virtio-fs share)."""
    request = ops_pb2.UpgradeRequest(
        sha256=sha256, path=guest_path, commit=True, ready_timeout_seconds=int(ready_timeout)
    )
    result: ops_pb2.UpgradeStatusResponse = await ops.Upgrade(request, timeout=120.0)
    return result


async def wait_outcome(ops: Any, within: float) -> ops_pb2.UpgradeStatusResponse:
    """Poll UpgradeStatus on the same connection (the agent hands it over) until the upgrade
    is done, rolled back or failed. A poll sent during the switch is answered by the new
    agent."""
    deadline = time.monotonic() + within
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"upgrade not finished within {within:g}s")
        status: ops_pb2.UpgradeStatusResponse = await ops.UpgradeStatus(
            ops_pb2.UpgradeStatusRequest(), timeout=left
        )
        if status.phase not in IN_PROGRESS:
            return status
        await asyncio.sleep(POLL_INTERVAL)


async def upgrade(
    ops: Any, artifact: Path, *, guest_path: str = "", ready_timeout: float = 0, within: float
) -> ops_pb2.UpgradeStatusResponse:
    """The whole upgrade; UpgradeFailed unless it ended "done"."""
    data = await asyncio.to_thread(artifact.read_bytes)
    if guest_path:
        digest = hashlib.sha256(data).hexdigest()
        await send_upgrade_path(ops, guest_path, digest, ready_timeout=ready_timeout)
    else:
        await send_upgrade(ops, data, ready_timeout=ready_timeout)
    status = await wait_outcome(ops, within)
    if status.phase != "done":
        raise UpgradeFailed(status)
    return status
