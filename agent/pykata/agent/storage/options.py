"""Kata's ``key=value`` storage options and the fsGroup ownership they ask for."""

from __future__ import annotations

import os
import stat

FSGID = "fsgid"


def option_map(options: list[str]) -> dict[str, str]:
    """``key=value`` options as a dict (as Kata: entries with exactly one ``=`` only)."""
    result = {}
    for option in options:
        parts = option.split("=")
        if len(parts) == 2:
            result[parts[0]] = parts[1]
    return result


def parse_gid(value: str) -> int:
    gid = int(value)
    if not 0 <= gid < 2**32:
        raise ValueError(f"gid {value} out of range")
    return gid


def set_fsgid(path: str, gid: int) -> None:
    """Group-own ``path`` and make new files inherit the group (setgid directory)."""
    os.chown(path, -1, gid)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    os.chmod(path, mode | stat.S_ISGID)
