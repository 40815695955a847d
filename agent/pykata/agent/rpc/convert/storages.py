"""protobuf Storage -> StorageSpec (the storage layer knows nothing of protobuf)."""

from __future__ import annotations

from collections.abc import Iterable

from pykata.agent.storage.manager import FsGroup, StorageSpec
from pykata.protocols import agent_pb2, types_pb2


def storage_specs(storages: Iterable[agent_pb2.Storage]) -> list[StorageSpec]:
    return [
        StorageSpec(
            driver=s.driver,
            driver_options=list(s.driver_options),
            source=s.source,
            fstype=s.fstype,
            options=list(s.options),
            mount_point=s.mount_point,
            fs_group=FsGroup(
                gid=s.fs_group.group_id,
                on_root_mismatch=s.fs_group.group_change_policy == types_pb2.OnRootMismatch,
            )
            if s.HasField("fs_group")
            else None,
        )
        for s in storages
    ]
