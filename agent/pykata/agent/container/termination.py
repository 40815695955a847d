"""A container's termination message (Kubernetes' ``terminationMessagePath``), for
GetDiagnosticData's ``termination_log``.

CRI names the file inside the container by an annotation and bind-mounts it from the
runtime's shared folder; the agent reads the bind's source in the guest, as the Rust agent
does: beneath its allowed root (beneath.BIND_ROOTS) with no symlink followed, a regular file,
at most 4 KiB (Kubernetes' own cap), not valid UTF-8 replaced. A file not written yet is an
empty message.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from pykata.agent import beneath, blocking
from pykata.agent.errors import FailedPrecondition, InvalidArgument, NotFound

ANNOTATION = "io.kubernetes.container.terminationMessagePath"
MAX_MESSAGE = 4096
READ_SECONDS = 10.0


async def read_message(spec: dict[str, Any]) -> str:
    """The termination message of the container ``spec`` (the guest's spec) describes; the
    read is bounded, as the file sits on a share whose daemon may not answer."""
    return await blocking.bounded(lambda: message(spec), READ_SECONDS, "termination message")


def message(spec: dict[str, Any]) -> str:
    destination = (spec.get("annotations") or {}).get(ANNOTATION)
    if not destination:
        raise FailedPrecondition(f"the container has no {ANNOTATION} annotation")
    source = next(
        (
            m.get("source", "")
            for m in spec.get("mounts") or []
            if os.path.normpath(m.get("destination", "")) == os.path.normpath(destination)
            and beneath.is_bind(m)
        ),
        None,
    )
    if source is None:
        raise FailedPrecondition(f"no bind mount at the termination message path {destination}")
    root = beneath.bind_root(source)
    if root is None or os.path.normpath(source) == root:
        raise InvalidArgument(f"termination message source {source!r} is outside the bind roots")
    try:
        fd = beneath.open_beneath(source, root, "termination message", os.O_RDONLY | os.O_NONBLOCK)
    except NotFound:
        return ""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidArgument(f"termination message source {source!r} is not a regular file")
        return os.pread(fd, MAX_MESSAGE, 0).decode(errors="replace")
    finally:
        os.close(fd)
