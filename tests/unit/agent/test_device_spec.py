"""A container's devices: the spec's host numbers become the guest's, unknown types refused."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from pykata.agent.device import spec as device_spec
from pykata.agent.device.registry import Devices
from pykata.agent.device.spec import DeviceSpec, GuestDevice, update_spec_devices
from pykata.agent.device.uevent import Uevent
from pykata.agent.errors import InvalidArgument
from pykata.agent.rpc.convert.devices import device_specs
from pykata.protocols import agent_pb2

GUEST = {"/dev/vda": GuestDevice("b", 254, 0), "/dev/sdb": GuestDevice("b", 8, 16)}


class Idle:
    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Devices:
    monkeypatch.setattr(device_spec, "guest_device", GUEST.__getitem__)
    devices = Devices(0.05, sysfs=str(tmp_path), listener=Idle())  # type: ignore[arg-type]
    devices.deliver(
        Uevent("add", "/devices/pci0000:00/0000:00:02.0/virtio1/block/vda", "block", "vda")
    )
    devices.deliver(
        Uevent(
            "add",
            "/devices/pci0000:00/0000:00:05.0/virtio3/host0/target0:0:1/0:0:1:0/block/sdb",
            "block",
            "sdb",
        )
    )
    return devices


def oci() -> dict[str, Any]:
    # As the protobuf converter gives it: zeros (minor 0) are absent.
    return {
        "linux": {
            "devices": [
                {"path": "/dev/xvda", "type": "b", "major": 8, "minor": 32},
                {"path": "/dev/data", "type": "b", "major": 259},
                {"path": "/dev/null", "type": "c", "major": 1, "minor": 3},
            ],
            "resources": {
                "devices": [
                    {"allow": False, "access": "rwm"},
                    {"allow": True, "type": "b", "major": 8, "minor": 32, "access": "rw"},
                    {"allow": True, "type": "b", "major": 259, "access": "rwm"},
                    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
                ]
            },
        }
    }


async def test_devices_get_the_guest_numbers(registry: Devices) -> None:
    spec = oci()
    await update_spec_devices(
        spec,
        [
            DeviceSpec(id="02", type="blk", container_path="/dev/xvda"),
            DeviceSpec(id="1:0", type="scsi", container_path="/dev/data"),
        ],
        registry,
    )
    linux = spec["linux"]
    assert linux["devices"] == [
        {"path": "/dev/xvda", "type": "b", "major": 254, "minor": 0},
        {"path": "/dev/data", "type": "b", "major": 8, "minor": 16},
        {"path": "/dev/null", "type": "c", "major": 1, "minor": 3},
    ]
    assert linux["resources"]["devices"] == [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "b", "major": 254, "minor": 0, "access": "rw"},
        # A rule without a minor names a range, not the host's device: left as it is.
        {"allow": True, "type": "b", "major": 259, "access": "rwm"},
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
        {"allow": True, "type": "b", "major": 254, "minor": 0, "access": "rwm"},
        {"allow": True, "type": "b", "major": 8, "minor": 16, "access": "rwm"},
    ]


async def test_named_devices(registry: Devices) -> None:
    spec = oci()
    await update_spec_devices(
        spec, [DeviceSpec(vm_path="/dev/vda", type="mmioblk", container_path="/dev/xvda")], registry
    )
    assert spec["linux"]["devices"][0]["major"] == 254


async def test_no_devices_leave_the_spec_alone(registry: Devices) -> None:
    spec = oci()
    await update_spec_devices(spec, [], registry)
    assert spec == oci()


@pytest.mark.parametrize(
    ("device", "message"),
    [
        (
            DeviceSpec(id="0000:01:00.0", type="vfio-pci", container_path="/dev/vfio/1"),
            "'vfio-pci' is not supported",
        ),
        (
            DeviceSpec(id="x", type="floppy", container_path="/dev/fd0"),
            "unknown device type 'floppy'",
        ),
        (DeviceSpec(id="02", container_path="/dev/xvda"), "has no type"),
        (DeviceSpec(type="blk", container_path="/dev/xvda"), "neither id nor vm_path"),
        (DeviceSpec(id="02", type="blk"), "no container path"),
        (DeviceSpec(id="02", type="nvdimm", container_path="/dev/xvda"), "no vm_path"),
        (
            DeviceSpec(id="02", type="blk", container_path="/dev/elsewhere"),
            "missing from the OCI spec",
        ),
        (DeviceSpec(id="zz", type="blk", container_path="/dev/xvda"), "PCI path element"),
    ],
)
async def test_refused(registry: Devices, device: DeviceSpec, message: str) -> None:
    spec = oci()
    with pytest.raises(InvalidArgument, match=message):
        await update_spec_devices(spec, [device], registry)


async def test_two_devices_for_one_path(registry: Devices) -> None:
    twice = [DeviceSpec(id="02", type="blk", container_path="/dev/xvda")] * 2
    with pytest.raises(InvalidArgument, match="two devices"):
        await update_spec_devices(copy.deepcopy(oci()), twice, registry)


def test_guest_device_of_real_nodes(tmp_path: Path) -> None:
    assert device_spec.guest_device("/dev/null") == GuestDevice("c", 1, 3)
    with pytest.raises(Exception, match="not a device node"):
        device_spec.guest_device(str(tmp_path))


def test_converter() -> None:
    request = agent_pb2.CreateContainerRequest()
    request.devices.add(
        id="02", type="blk", vm_path="/dev/vda", container_path="/dev/xvda", options=["a"]
    )
    assert device_specs(request.devices) == [
        DeviceSpec(
            id="02", type="blk", vm_path="/dev/vda", container_path="/dev/xvda", options=["a"]
        )
    ]
