"""protobuf Device -> DeviceSpec (the device layer knows nothing of protobuf)."""

from __future__ import annotations

from collections.abc import Iterable

from pykata.agent.device.spec import DeviceSpec
from pykata.protocols import agent_pb2


def device_specs(devices: Iterable[agent_pb2.Device]) -> list[DeviceSpec]:
    return [
        DeviceSpec(
            id=d.id,
            type=d.type,
            vm_path=d.vm_path,
            container_path=d.container_path,
            options=list(d.options),
        )
        for d in devices
    ]
