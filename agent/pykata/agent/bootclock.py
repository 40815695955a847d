"""Seconds since the guest kernel started, for the start-up timeline in the agent's log.

The host stamps console lines with its own clock; these let it place the kernel's start and
the agent's exec on that clock too (`just bench-boot`), even on a quiet console.
"""

from __future__ import annotations

import os


def uptime(path: str = "/proc/uptime") -> float | None:
    try:
        with open(path) as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def exec_uptime(path: str = "/proc/self/stat") -> float | None:
    """When this process was started (its last exec), in seconds since the kernel started."""
    try:
        with open(path) as f:
            stat = f.read()
        # Field 22 (starttime, clock ticks); the command name before it may hold spaces.
        ticks = int(stat[stat.rindex(")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None
    return ticks / os.sysconf("SC_CLK_TCK")
