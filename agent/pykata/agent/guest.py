"""Guest-wide knobs behind sandbox-level RPCs: clock, entropy, CPU/memory hotplug, facts."""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import glob
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from pykata.agent import log
from pykata.agent.errors import FailedPrecondition, InvalidArgument
from pykata.agent.libc import last_error, libc

logger = log.get("guest")

SYSFS_MEMORY = "/sys/devices/system/memory"
MEMORY_BLOCK_SIZE = f"{SYSFS_MEMORY}/block_size_bytes"
MEMORY_PROBE = f"{SYSFS_MEMORY}/probe"
SYSFS_CPU = "/sys/devices/system/cpu"
RNDADDTOENTCNT = 0x40045201
RNDRESEEDCRNG = 0x5207
ONLINE_RETRIES = 100
ONLINE_RETRY_DELAY = 0.05


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


def set_time(sec: int, usec: int) -> None:
    if not 0 <= usec < 1_000_000 or sec < 0:
        raise InvalidArgument(f"invalid time {sec}s {usec}us")
    tv = _Timeval(sec, usec)
    if libc.settimeofday(ctypes.byref(tv), None) != 0:
        raise last_error("settimeofday")


def reseed_random(data: bytes) -> None:
    """Mix ``data`` into the kernel's pool, credit it and reseed the CRNG, as Kata does
    (crediting one bit per byte: the host's randomness is trusted, but conservatively)."""
    if not data:
        raise InvalidArgument("no entropy data")
    fd = os.open("/dev/random", os.O_RDWR | os.O_CLOEXEC)
    try:
        os.write(fd, data)
        fcntl.ioctl(fd, RNDADDTOENTCNT, struct.pack("i", len(data)))
        fcntl.ioctl(fd, RNDRESEEDCRNG, 0)
    finally:
        os.close(fd)


def memory_block_size(path: str = MEMORY_BLOCK_SIZE) -> int:
    """The hotplug memory block size in bytes, 0 when the guest has no memory hotplug."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return 0
    return int(text, 16)


def supports_memory_probe() -> bool:
    return os.path.exists(MEMORY_PROBE)


def probe_memory(addresses: list[int]) -> None:
    if not supports_memory_probe():
        raise FailedPrecondition("this guest has no memory probe interface")
    for address in addresses:
        with open(MEMORY_PROBE, "w") as f:
            f.write(f"{address:#x}")


def _online_all(pattern: str, limit: int | None = None) -> int:
    """Write 1 to every offline ``online`` file matching ``pattern``; count them."""
    count = 0
    for path in sorted(glob.glob(pattern)):
        if limit is not None and count >= limit:
            break
        try:
            with open(path) as f:
                if f.read().strip() == "1":
                    continue
            with open(path, "w") as f:
                f.write("1")
            count += 1
        except OSError as exc:
            logger.debug("cannot online", extra={"path": path, "error": str(exc)})
    return count


def parse_cpu_list(text: str) -> set[int]:
    """A kernel CPU list such as ``0-3,6``."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def online_cpu_count(sysfs: str = SYSFS_CPU) -> int:
    with open(f"{sysfs}/online") as f:
        return len(parse_cpu_list(f.read()))


def online_cpus(wanted: int, sysfs: str = SYSFS_CPU) -> int:
    """Online offline CPUs until ``wanted`` are online in total (as far as sysfs already
    shows them); returns how many are online now."""
    missing = wanted - online_cpu_count(sysfs)
    if missing > 0:
        _online_all(f"{sysfs}/cpu[0-9]*/online", missing)
    return online_cpu_count(sysfs)


def online_memory(sysfs: str = SYSFS_MEMORY) -> int:
    return _online_all(f"{sysfs}/memory[0-9]*/online")


_background: set[asyncio.Task[None]] = set()


async def online_cpu_mem(
    nb_cpus: int, *, cpu_only: bool, wait: bool, after_cpus: Callable[[], None] | None = None
) -> None:
    """OnlineCPUMem: with ``wait``, answer once the CPUs are online; otherwise do it in the
    background and answer at once (failures are logged). ``after_cpus`` runs once CPUs were
    asked for and are online (widening running containers' cpusets)."""
    work = online_cpus_and_memory(nb_cpus, cpu_only=cpu_only, after_cpus=after_cpus)
    if wait:
        await work
        return
    task = asyncio.ensure_future(work)
    _background.add(task)
    task.add_done_callback(_finished)


def _finished(task: asyncio.Task[None]) -> None:
    _background.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.error("onlining CPUs or memory failed", extra={"error": str(task.exception())})


async def online_cpus_and_memory(
    nb_cpus: int, *, cpu_only: bool, after_cpus: Callable[[], None] | None = None
) -> None:
    """As Kata: ``nb_cpus`` is how many CPUs must be online in the end (0: leave them), then
    every memory block is onlined unless ``cpu_only``. Hotplugged CPUs show up in sysfs a
    little after the runtime asked, hence the retries."""
    if nb_cpus > 0:
        for _ in range(ONLINE_RETRIES):
            if online_cpus(nb_cpus) >= nb_cpus:
                break
            await asyncio.sleep(ONLINE_RETRY_DELAY)
        else:
            raise FailedPrecondition(
                f"only {online_cpu_count()} of {nb_cpus} CPUs could be onlined"
            )
    if not cpu_only:
        logger.info("onlined memory", extra={"memory_blocks": online_memory()})
    if nb_cpus > 0 and after_cpus is not None:
        after_cpus()


@dataclass(frozen=True)
class GuestDetails:
    mem_block_size: int  # bytes, 0 when unknown or not asked for
    mem_hotplug_probe: bool
    seccomp: bool


def details(*, mem_block_size: bool, mem_hotplug_probe: bool) -> GuestDetails:
    """What the runtime asks right after boot; never fails (an unreadable value is 0)."""
    block_size = 0
    if mem_block_size:
        try:
            block_size = memory_block_size()
        except (OSError, ValueError) as exc:
            logger.warning("cannot read memory block size", extra={"error": str(exc)})
    return GuestDetails(
        mem_block_size=block_size,
        mem_hotplug_probe=mem_hotplug_probe and supports_memory_probe(),
        seccomp=seccomp_supported(),
    )


def seccomp_supported() -> bool:
    """The kernel offers seccomp filters (the OCI runtime applies them)."""
    try:
        with open("/proc/self/status") as f:
            return any(line.startswith("Seccomp:") for line in f)
    except OSError:
        return False
