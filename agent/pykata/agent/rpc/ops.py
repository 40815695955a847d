"""pykata.ops.v1.Ops: the ops channel's handlers (docs/ops.md); they translate only."""

from __future__ import annotations

import json
from dataclasses import asdict

from pykata.agent.ops import status
from pykata.agent.ops.runtime import AgentRuntime
from pykata.agent.upgrade import state as upgrade_state
from pykata.agent.upgrade.manager import UpgradeManager, UpgradeStatus
from pykata.protocols import ops_pb2


def _upgrade_status(current: UpgradeStatus) -> ops_pb2.UpgradeStatusResponse:
    return ops_pb2.UpgradeStatusResponse(**asdict(current))


class OpsHandlers:
    def __init__(self, runtime: AgentRuntime, upgrades: UpgradeManager) -> None:
        self._runtime = runtime
        self._upgrades = upgrades

    async def Status(self, request: ops_pb2.StatusRequest) -> ops_pb2.StatusResponse:
        current = status.collect(self._runtime)
        fields = asdict(current)
        containers = fields.pop("containers")
        return ops_pb2.StatusResponse(
            **fields,
            containers=[
                ops_pb2.ContainerStatus(
                    id=c["id"],
                    state=c["state"],
                    processes=[ops_pb2.ProcessStatus(**p) for p in c["processes"]],
                )
                for c in containers
            ],
        )

    async def SetLogLevel(self, request: ops_pb2.SetLogLevelRequest) -> ops_pb2.SetLogLevelResponse:
        previous, level = status.set_log_level(request.level)
        return ops_pb2.SetLogLevelResponse(previous=previous, level=level)

    async def DumpState(self, request: ops_pb2.DumpStateRequest) -> ops_pb2.DumpStateResponse:
        dump = upgrade_state.describe(self._runtime)
        return ops_pb2.DumpStateResponse(json=json.dumps(dump, indent=1, sort_keys=True))

    async def Upgrade(self, request: ops_pb2.UpgradeRequest) -> ops_pb2.UpgradeStatusResponse:
        if request.data or not request.commit:
            current = await self._upgrades.receive(
                request.sha256, request.size, request.offset, request.data
            )
            if not request.commit:
                return _upgrade_status(current)
        current = await self._upgrades.commit(
            request.sha256, request.path, float(request.ready_timeout_seconds)
        )
        return _upgrade_status(current)

    async def UpgradeStatus(
        self, request: ops_pb2.UpgradeStatusRequest
    ) -> ops_pb2.UpgradeStatusResponse:
        return _upgrade_status(self._upgrades.status())
