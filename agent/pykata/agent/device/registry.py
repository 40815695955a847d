"""Which devices the guest has, and waiting for one to appear (bounded by hotplug_timeout).

A wait starts the uevent listener, registers itself, then scans sysfs: a device that was
there before (cold-plugged, or hot-plugged before anyone asked) is found by the scan, one that
comes later by its ``add`` uevent. Kata keeps every uevent since boot instead; the scan gives
the same answer without a listener running from the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pykata.agent import log
from pykata.agent.device.uevent import ADD, REMOVE, Listener, Uevent
from pykata.agent.errors import DeadlineExceeded

logger = log.get("device")

SYSFS = "/sys"
DEFAULT_TIMEOUT = 3.0

Matcher = Callable[[Uevent], bool]


@dataclass
class _Waiter:
    matches: Matcher
    found: asyncio.Future[Uevent]


def read_uevent_file(path: str) -> dict[str, str]:
    """A sysfs ``uevent`` file: the ``KEY=value`` lines the kernel would send for it."""
    props: dict[str, str] = {}
    with open(path) as f:
        for line in f:
            key, sep, value = line.rstrip("\n").partition("=")
            if sep:
                props[key] = value
    return props


def scan_block_devices(sysfs: str = SYSFS) -> list[Uevent]:
    """Every block device (disks and partitions) present now, as ``add`` uevents."""
    found = []
    class_dir = os.path.join(sysfs, "class", "block")
    try:
        names = sorted(os.listdir(class_dir))
    except FileNotFoundError:
        return []
    for name in names:
        # Each entry links to the device's real directory below <sysfs>/devices.
        real = os.path.realpath(os.path.join(class_dir, name))
        devpath = "/" + os.path.relpath(real, os.path.realpath(sysfs))
        try:
            props = read_uevent_file(os.path.join(real, "uevent"))
        except OSError:
            continue
        found.append(
            Uevent(
                action=ADD, devpath=devpath, subsystem="block", devname=props.get("DEVNAME", name)
            )
        )
    return found


class Devices:
    """The guest's devices as uevents tell them, and the tasks waiting for one."""

    def __init__(
        self,
        hotplug_timeout: float = DEFAULT_TIMEOUT,
        *,
        sysfs: str = SYSFS,
        listener: Listener | None = None,
    ) -> None:
        self.hotplug_timeout = hotplug_timeout
        self.sysfs = sysfs
        self._listener = listener if listener is not None else Listener(self.deliver)
        self._seen: dict[str, Uevent] = {}  # by devpath, devices added since listening
        self._waiters: list[_Waiter] = []

    def deliver(self, event: Uevent) -> None:
        """One uevent from the kernel: remember it and wake whoever waits for it."""
        if event.action == REMOVE:
            self._seen.pop(event.devpath, None)
            return
        if event.action != ADD:
            return
        self._seen[event.devpath] = event
        for waiter in list(self._waiters):
            if not waiter.found.done() and waiter.matches(event):
                waiter.found.set_result(event)

    def start(self) -> None:
        """Listen to uevents from now on (idempotent)."""
        self._listener.start()

    def stop(self) -> None:
        self._listener.stop()

    async def wait(
        self,
        matches: Matcher,
        what: str,
        *,
        scan: Callable[[str], Iterable[Uevent]] = scan_block_devices,
        prepare: Callable[[], None] | None = None,
    ) -> Uevent:
        """The ``add`` uevent of the device ``matches`` accepts, from sysfs or as it comes.

        ``prepare`` runs once the listener is up (a SCSI bus rescan); ``what`` names the
        device in the DeadlineExceeded raised after ``hotplug_timeout`` seconds."""
        self.start()
        loop = asyncio.get_running_loop()
        waiter = _Waiter(matches, loop.create_future())
        self._waiters.append(waiter)
        try:
            for event in [*self._seen.values(), *scan(self.sysfs)]:
                if matches(event):
                    return event
            if prepare is not None:
                prepare()
            logger.info("waiting for device", extra={"device": what})
            try:
                event = await asyncio.wait_for(waiter.found, timeout=self.hotplug_timeout)
            except TimeoutError:
                raise DeadlineExceeded(
                    f"timed out after {self.hotplug_timeout:g}s waiting for {what}"
                ) from None
            logger.info("device appeared", extra={"device": what, "devname": event.devname})
            return event
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
