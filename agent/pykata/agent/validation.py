"""Validation of identifiers and paths that come from the host."""

from __future__ import annotations

import os
import re
import signal

from pykata.agent.errors import InvalidArgument

# Kata's id rule (and runc's): starts alphanumeric, then alphanumerics and _ . -
_ID = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
MAX_ID_LENGTH = 256

# The one tree every path from the host must stay in.
CONTAINER_BASE = "/run/kata-containers"


def _validate_id(kind: str, value: str) -> str:
    if not value:
        raise InvalidArgument(f"{kind} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(f"{kind} longer than {MAX_ID_LENGTH} characters")
    if not _ID.fullmatch(value):
        raise InvalidArgument(f"invalid {kind} {value!r}: must match {_ID.pattern}")
    return value


# Container ids name /run/kata-containers/<cid> (the bundle): these are the agent's own folders
# there (the sandbox's state, the shared dir) or Kata's (guest-pulled images).
RESERVED_CONTAINER_IDS = frozenset({"sandbox", "shared", "image"})


def validate_container_id(cid: str) -> str:
    _validate_id("container id", cid)
    if cid in RESERVED_CONTAINER_IDS:
        raise InvalidArgument(f"container id {cid!r} is reserved (a folder of the agent's own)")
    return cid


def validate_exec_id(eid: str) -> str:
    return _validate_id("exec id", eid)


def validate_sandbox_id(sid: str) -> str:
    return _validate_id("sandbox id", sid)


def validate_signal(sig: int) -> int:
    if not 0 < sig < signal.NSIG:
        raise InvalidArgument(f"invalid signal {sig}")
    return sig


def safe_join(root: str, path: str) -> str:
    """``root``/``path`` lexically normalised; InvalidArgument if it leaves ``root``.

    Absolute ``path`` values are taken relative to ``root``. Symlinks are not resolved here:
    callers that open the result must not follow links they did not create.
    """
    if "\0" in path:
        raise InvalidArgument(f"path contains a NUL byte: {path!r}")
    root = os.path.normpath(root)
    joined = os.path.normpath(os.path.join(root, path.lstrip("/")))
    if joined != root and not joined.startswith(root.rstrip("/") + "/"):
        raise InvalidArgument(f"path {path!r} escapes {root}")
    return joined


def validate_under(path: str, root: str = CONTAINER_BASE) -> str:
    """An absolute ``path`` that, once normalised, lies strictly below ``root``."""
    if not path or not path.startswith("/"):
        raise InvalidArgument(f"path {path!r} must be absolute")
    if "\0" in path:
        raise InvalidArgument(f"path contains a NUL byte: {path!r}")
    normal = os.path.normpath(path)
    if not normal.startswith(os.path.normpath(root) + "/"):
        raise InvalidArgument(f"path {path!r} is not under {root}")
    return normal
