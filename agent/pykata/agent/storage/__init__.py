"""Storage drivers by Kata driver name, and the ref-counting manager."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pykata.agent.device.registry import Devices
    from pykata.agent.storage.manager import Driver


def drivers(devices: Devices) -> dict[str, Driver]:
    """``devices``: where the block drivers wait for their disk."""
    from pykata.agent.storage import bind, block, ephemeral, local, overlay, virtiofs

    return {
        "virtio-fs": virtiofs.attach,
        "local": local.attach,
        "ephemeral": ephemeral.attach,
        "overlayfs": overlay.attach,
        "watchable-bind": bind.attach,
        "blk": partial(block.attach_pci, devices),
        "virtio-blk-pci": partial(block.attach_pci, devices),
        "mmioblk": partial(block.attach_mmio, devices),
        "scsi": partial(block.attach_scsi, devices),
        "nvdimm": partial(block.attach_nvdimm, devices),
    }
