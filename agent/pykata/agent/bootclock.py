"""Seconds since the guest kernel started, for the start-up timeline in the agent's log.

The host stamps console lines with its own clock; these let it place the kernel's start and
the agent's exec on that clock too (`just bench-boot`), even on a quiet console.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Iterator


def uptime(path: str = "/proc/uptime") -> float | None:
    try:
        with open(path) as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def exec_uptime(kmsg: str = "/dev/kmsg") -> float | None:
    """When the kernel exec'd init (this agent, as PID 1), in seconds since it started.

    From the kernel's own "Run /init as init process" record: its log buffer keeps it even
    on a quiet console. (A process's starttime in /proc is when it was created, which for
    PID 1 is before the initramfs is unpacked.) None when there is no such record.
    """
    try:
        fd = os.open(kmsg, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return init_exec_stamp(_records(fd))
    finally:
        os.close(fd)


def _records(fd: int) -> Iterator[bytes]:
    """/dev/kmsg's records, one per read, until none is left."""
    while True:
        try:
            record = os.read(fd, 8192)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EPIPE:  # overwritten while reading: go on from the next
                continue
            return
        if not record:
            return
        yield record


def init_exec_stamp(records: Iterable[bytes]) -> float | None:
    """The stamp of the "Run ... as init process" record ("prio,seq,usec,flags;text")."""
    for record in records:
        header, _, text = record.partition(b";")
        if text.startswith(b"Run ") and b" as init process" in text:
            try:
                return int(header.split(b",")[2]) / 1e6
            except (IndexError, ValueError):
                return None
    return None
