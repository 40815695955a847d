"""Usage of a mounted volume, as GetVolumeStats reports it (CSI's bytes and inodes)."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

from pykata.agent.errors import NotFound
from pykata.agent.validation import validate_under


@dataclass(frozen=True)
class Usage:
    total: int
    available: int

    @property
    def used(self) -> int:
        return self.total - self.available


@dataclass(frozen=True)
class VolumeStats:
    bytes: Usage
    inodes: Usage


async def volume_stats(path: str) -> VolumeStats:
    """Usage of the file system holding ``path`` (below /run/kata-containers)."""
    path = validate_under(path)
    try:
        st = await asyncio.to_thread(os.statvfs, path)
    except FileNotFoundError:
        raise NotFound(f"volume {path} not found") from None
    return VolumeStats(
        bytes=Usage(total=st.f_blocks * st.f_frsize, available=st.f_bavail * st.f_frsize),
        inodes=Usage(total=st.f_files, available=st.f_ffree),
    )
