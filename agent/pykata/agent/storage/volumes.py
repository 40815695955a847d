"""Usage of a mounted volume, as GetVolumeStats reports it (CSI's bytes and inodes)."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

from pykata.agent import beneath
from pykata.agent.errors import NotFound
from pykata.agent.validation import CONTAINER_BASE


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


def _statvfs(path: str, root: str) -> os.statvfs_result:
    with beneath.opened(path, root, "volume_guest_path") as fd:
        return os.fstatvfs(fd)


async def volume_stats(path: str, root: str = CONTAINER_BASE) -> VolumeStats:
    """Usage of the file system holding ``path`` (below /run/kata-containers, reached
    without a symlink: a link would answer another file system's figures)."""
    try:
        st = await asyncio.to_thread(_statvfs, path, root)
    except NotFound:
        raise NotFound(f"volume {path} not found") from None
    return VolumeStats(
        bytes=Usage(total=st.f_blocks * st.f_frsize, available=st.f_bavail * st.f_frsize),
        inodes=Usage(total=st.f_files, available=st.f_ffree),
    )
