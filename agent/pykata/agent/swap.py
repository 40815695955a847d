"""Guest swap on disks the runtime hot-plugs (Kata's ``enable_guest_swap``).

The runtime makes the swap area on the host (mkswap), plugs the file in as a disk and names
it: AddSwap by its PCI path (virtio-blk on PCI), AddSwapPath by its ``/dev`` node (other
transports). The agent waits for the disk like for a block storage, opens the node beneath
``/dev`` without following a symlink, checks that it is a block device and hands that
opened node to swapon(2) (through ``/proc/self/fd``), so the node checked is the node used.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence

from pykata.agent import beneath, log
from pykata.agent.device import blockdev
from pykata.agent.device.registry import Devices
from pykata.agent.errors import AlreadyExists, InvalidArgument
from pykata.agent.libc import last_error, libc

logger = log.get("swap")

# A PCI path goes through at most a few bridges; more is not a path the runtime makes.
MAX_PCI_DEPTH = 8


async def add_by_pci_path(devices: Devices, slots: Sequence[int]) -> str:
    """Swap on the virtio-blk disk at PCI path ``slots`` (function 0 at each level)."""
    if not slots or len(slots) > MAX_PCI_DEPTH:
        raise InvalidArgument(f"PCIPath: {len(slots)} slots, expected 1 to {MAX_PCI_DEPTH}")
    # The PCI path parser checks each slot's range.
    node = await blockdev.pci_disk(devices, "/".join(f"{slot:02x}" for slot in slots))
    swap_on(node)
    return node


async def add_by_path(devices: Devices, path: str) -> str:
    """Swap on the disk the runtime named ``path`` (``/dev/<name>``)."""
    await blockdev.named_disk(devices, path, "swap")
    swap_on(path)
    return path


def swap_on(node: str) -> None:
    fd = beneath.open_beneath(node, "/dev", "path")
    try:
        if not stat.S_ISBLK(os.fstat(fd).st_mode):
            raise InvalidArgument(f"path: {node} is not a block device")
        if libc.swapon(beneath.fd_path(fd).encode(), 0) != 0:
            error = last_error(f"swapon {node}", node)
            if error.errno == errno.EINVAL:
                raise InvalidArgument(f"{node} holds no swap area (mkswap): {error.strerror}")
            if error.errno == errno.EBUSY:
                raise AlreadyExists(f"{node} is already in use as swap")
            raise error
    finally:
        os.close(fd)
    logger.info("swap added", extra={"device": node})
