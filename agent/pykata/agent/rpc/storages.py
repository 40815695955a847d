"""AgentService RPCs about storages and volumes once the sandbox exists."""

from __future__ import annotations

from google.protobuf import empty_pb2

from pykata.agent.rpc.convert.storages import storage_specs
from pykata.agent.sandbox import Sandbox
from pykata.agent.storage import virtiofs
from pykata.agent.storage.volumes import volume_stats
from pykata.protocols import agent_pb2, csi_pb2


class StorageHandlers:
    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    async def UpdateEphemeralMounts(
        self, req: agent_pb2.UpdateEphemeralMountsRequest
    ) -> empty_pb2.Empty:
        await self._sandbox.update_ephemeral_mounts(storage_specs(req.storages))
        return empty_pb2.Empty()

    async def RemoveStaleVirtiofsShareMounts(
        self, req: agent_pb2.RemoveStaleVirtiofsShareMountsRequest
    ) -> empty_pb2.Empty:
        await virtiofs.touch_share_mounts()
        return empty_pb2.Empty()

    async def GetVolumeStats(
        self, req: agent_pb2.VolumeStatsRequest
    ) -> csi_pb2.VolumeStatsResponse:
        stats = await volume_stats(req.volume_guest_path)
        return csi_pb2.VolumeStatsResponse(
            usage=[
                csi_pb2.VolumeUsage(
                    available=usage.available, total=usage.total, used=usage.used, unit=unit
                )
                for usage, unit in (
                    (stats.bytes, csi_pb2.VolumeUsage.BYTES),
                    (stats.inodes, csi_pb2.VolumeUsage.INODES),
                )
            ],
            volume_condition=csi_pb2.VolumeCondition(abnormal=False, message="OK"),
        )
