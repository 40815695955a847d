"""Kernel uevents: what one says, and the netlink listener that hears them.

The listener is pyudev's kernel monitor (the guest has no udevd, so ``source="kernel"``);
pyudev, libudev and the monitor add ~0.7 MiB to the agent's RSS, so they load when the first
device is waited for, not at agent start. Nothing is missed by starting late: a wait scans
sysfs after the listener is up (see ``registry``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pykata.agent import log

logger = log.get("uevent")

ADD = "add"
REMOVE = "remove"
DEV_PREFIX = "/dev/"


@dataclass(frozen=True)
class Uevent:
    action: str
    devpath: str  # below /sys: /devices/pci0000:00/0000:00:02.0/virtio1/block/vda
    subsystem: str = ""
    devname: str = ""  # below /dev: vda, sdb, pmem0 ("" for devices without a node)
    seqnum: int = 0


def from_properties(props: Mapping[str, str]) -> Uevent:
    """A uevent from its ``KEY=value`` environment (the kernel's, or libudev's copy of it,
    which makes DEVNAME absolute)."""
    devname = props.get("DEVNAME", "")
    if devname.startswith(DEV_PREFIX):
        devname = devname[len(DEV_PREFIX) :]
    seqnum = props.get("SEQNUM", "0")
    return Uevent(
        action=props.get("ACTION", ""),
        devpath=props.get("DEVPATH", ""),
        subsystem=props.get("SUBSYSTEM", ""),
        devname=devname,
        seqnum=int(seqnum) if seqnum.isdigit() else 0,
    )


def parse(message: bytes) -> Uevent | None:
    """A raw kernel netlink message (``add@/devices/...\\0ACTION=add\\0...``); None when it
    is not one (libudev's own messages start with ``libudev``)."""
    header, _, body = message.partition(b"\0")
    if b"@" not in header:
        return None
    props: dict[str, str] = {}
    for item in body.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            props[key.decode(errors="replace")] = value.decode(errors="replace")
    if "ACTION" not in props or "DEVPATH" not in props:
        return None
    return from_properties(props)


class Listener:
    """The kernel uevent socket, read on the event loop; every event goes to ``deliver``."""

    def __init__(self, deliver: Callable[[Uevent], None]) -> None:
        self._deliver = deliver
        self._monitor: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def running(self) -> bool:
        return self._monitor is not None

    def start(self) -> None:
        if self._monitor is not None:
            return
        import pyudev  # here: RSS a pod without hot-plugged devices never pays

        monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="kernel")
        monitor.start()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(monitor.fileno(), self._readable)
        self._monitor = monitor
        logger.info("listening to kernel uevents")

    def _readable(self) -> None:
        while True:
            try:
                device = self._monitor.poll(timeout=0)
            except OSError as exc:
                # ENOBUFS: the socket overflowed; later waits still scan sysfs.
                logger.warning("uevent lost", extra={"error": str(exc)})
                return  # the reader is called again while data is queued
            if device is None:
                return
            event = from_properties(dict(device.properties))
            logger.debug(
                "uevent",
                extra={"action": event.action, "devpath": event.devpath, "devname": event.devname},
            )
            self._deliver(event)

    def stop(self) -> None:
        if self._monitor is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._monitor.fileno())
        self._monitor = None
