"""SCSI addresses as Kata gives them (``<target>:<lun>``, channel 0) and the disk behind one.

The host number is left open: the guest numbers its SCSI hosts in probe order, which the
runtime cannot know, so ``0:0`` matches ``.../2:0:0:0/block/sdb`` as well as host 0's disk.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from pykata.agent.device.uevent import ADD, Uevent
from pykata.agent.errors import InvalidArgument

SCSI_HOSTS = "class/scsi_host"


@dataclass(frozen=True)
class ScsiAddress:
    target: int
    lun: int

    def __str__(self) -> str:
        return f"{self.target}:{self.lun}"


def parse_address(text: str) -> ScsiAddress:
    match = re.fullmatch(r"(\d+):(\d+)", text)
    if match is None:
        raise InvalidArgument(f"SCSI address {text!r} is not <target>:<lun>")
    return ScsiAddress(int(match.group(1)), int(match.group(2)))


def disk_matcher(address: ScsiAddress) -> re.Pattern[str]:
    """The devpath of that address's whole disk (not its partitions), on any host."""
    return re.compile(rf"/\d+:0:{address.target}:{address.lun}/block/([^/]+)$")


def matches(address: ScsiAddress, event: Uevent) -> bool:
    if event.action != ADD or event.subsystem != "block" or not event.devname:
        return False
    found = disk_matcher(address).search(event.devpath)
    return found is not None and found.group(1) == event.devname


def rescan(address: ScsiAddress, sysfs: str = "/sys") -> None:
    """Ask every SCSI host to probe that target and LUN (the device may not be seen yet)."""
    hosts_dir = os.path.join(sysfs, SCSI_HOSTS)
    try:
        hosts = sorted(os.listdir(hosts_dir))
    except FileNotFoundError:
        return
    for host in hosts:
        with open(os.path.join(hosts_dir, host, "scan"), "w") as f:
            f.write(f"0 {address.target} {address.lun}")
