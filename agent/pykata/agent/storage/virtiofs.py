"""``virtio-fs``: mount a virtio-fs tag (``source``, e.g. kataShared) on the mount point."""

from __future__ import annotations

import asyncio
import os

from pykata.agent import log
from pykata.agent.copyfile import SHARED_DIR
from pykata.agent.mount import fstype_of, mount_points
from pykata.agent.storage.manager import (
    Attached,
    StorageSpec,
    mount_at,
    prepare_mount_point,
    undone_on_error,
)
from pykata.agent.storage.options import fs_mount_options

logger = log.get("storage")

FSTYPE = "virtiofs"
# The runtime may have mounted the shared fs itself before the agent asks (Kata's premount),
# with virtio-fs or another shared fs (9p, a bind): whatever is mounted there is kept.
PREMOUNT_TAG = "kataShared"


def attach(spec: StorageSpec, cid: str | None) -> Attached:
    if not spec.source:
        raise ValueError("virtio-fs storage needs a tag as source")
    if spec.fstype not in ("", FSTYPE):
        raise ValueError(f"virtio-fs storage with fstype {spec.fstype!r}")
    flags, data = fs_mount_options(spec.options)
    created = prepare_mount_point(spec.mount_point)
    premounted = fstype_of(spec.mount_point) if spec.source == PREMOUNT_TAG else None
    if premounted is not None:
        logger.warning(
            "shared fs already mounted, kept",
            extra={"mount_point": spec.mount_point, "fstype": premounted},
        )
        return Attached(spec.mount_point, mounted=False, created=created)
    attached = Attached(spec.mount_point, created=created)
    with undone_on_error(attached):
        mount_at(spec.mount_point, spec.source, FSTYPE, flags, data)
        attached.mounted = True
    return attached


async def touch_share_mounts() -> None:
    """stat() every mount below the shared dir: virtiofsd then notices the ones whose host
    side is gone (RemoveStaleVirtiofsShareMounts)."""
    for point, _ in mount_points():
        if point.startswith(SHARED_DIR + "/"):
            try:
                await asyncio.to_thread(os.stat, point)
            except OSError as exc:
                logger.info("stale share mount", extra={"mount": point, "error": str(exc)})
