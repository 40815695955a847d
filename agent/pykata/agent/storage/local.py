"""``local``: a plain directory in the guest (emptyDir on the VM's own memory/disk).

Options: ``mode=<octal>`` for its permissions and ``fsgid=<gid>`` for group ownership.
The directory and its content go away with the last reference.
"""

from __future__ import annotations

import os
import stat

from pykata.agent import beneath
from pykata.agent.storage.manager import (
    ROOT,
    Attached,
    StorageSpec,
    prepare_mount_point,
    undone_on_error,
)
from pykata.agent.storage.options import FSGID, option_map, parse_gid

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY


def attach(spec: StorageSpec, cid: str | None) -> Attached:
    opts = option_map(spec.options)
    gid = parse_gid(opts[FSGID]) if FSGID in opts else None
    mode = int(opts["mode"], 8) if "mode" in opts else None
    if mode is not None and not 0 <= mode <= 0o7777:
        raise ValueError(f"mode {opts['mode']} out of range")
    created = prepare_mount_point(spec.mount_point)
    # Only a directory made here is the storage's own (its content goes with it).
    own = bool(created) and created[0] == spec.mount_point
    attached = Attached(spec.mount_point, created=created[1:] if own else created, remove_tree=own)
    with (
        undone_on_error(attached),
        beneath.opened(spec.mount_point, ROOT.get(), "mount_point", DIR_FLAGS) as fd,
    ):
        if gid is not None:
            os.fchown(fd, -1, gid)
        if mode is not None:
            os.fchmod(fd, mode | (stat.S_ISGID if gid is not None else 0))
        elif gid is not None:
            os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) | stat.S_ISGID)
    return attached
