"""``ephemeral``: a tmpfs (or hugetlbfs when fstype says so) private to the sandbox.

``fsgid=<gid>`` makes it group-owned and setgid; for hugetlbfs, ``pagesize=`` and ``size=``
(bytes) first reserve the pages through sysfs, as Kata does.
"""

from __future__ import annotations

import os

from pykata.agent import beneath, log
from pykata.agent.errors import InvalidArgument
from pykata.agent.mount import MS_REMOUNT, mount
from pykata.agent.storage.manager import (
    ROOT,
    Attached,
    StorageSpec,
    check_no_symlinks,
    mount_at,
    prepare_mount_point,
    undone_on_error,
)
from pykata.agent.storage.options import (
    FSGID,
    fs_mount_options,
    option_map,
    parse_gid,
    set_fsgid,
)

logger = log.get("storage")

DIR_READ = os.O_RDONLY | os.O_DIRECTORY
HUGEPAGES = "/sys/kernel/mm/hugepages"


def reserve_hugepages(options: list[str]) -> None:
    sizes: dict[str, int] = {}
    for option in options:
        for item in option.split(","):
            key, sep, value = item.strip().partition("=")
            if sep and key in ("pagesize", "size"):
                sizes[key] = int(value)
    if "pagesize" not in sizes or "size" not in sizes:
        raise ValueError("hugetlbfs storage needs pagesize= and size= options")
    pagesize, size = sizes["pagesize"], sizes["size"]
    if pagesize <= 0 or pagesize % 1024 or size < 0:
        raise ValueError(f"bad hugepage sizes pagesize={pagesize} size={size}")
    path = f"{HUGEPAGES}/hugepages-{pagesize // 1024}kB/nr_hugepages"
    wanted = size // pagesize
    with open(path, "w") as f:
        f.write(str(wanted))
    with open(path) as f:
        got = int(f.read().strip() or 0)
    if got != wanted:
        raise OSError(f"only {got} of {wanted} hugepages of {pagesize} bytes allocated")


def remount(spec: StorageSpec) -> None:
    """Apply new options (e.g. ``remount,size=2048M`` after memory hotplug) to a mounted one."""
    try:
        flags, data = fs_mount_options(
            (o for o in spec.options if not o.startswith(FSGID + "=")), remount=True
        )
    except ValueError as exc:
        raise InvalidArgument(f"ephemeral storage at {spec.mount_point}: {exc}") from None
    check_no_symlinks(spec.mount_point)
    mount(spec.source or "none", spec.mount_point, None, flags | MS_REMOUNT, data)


def attach(spec: StorageSpec, cid: str | None) -> Attached:
    fstype = spec.fstype or "tmpfs"
    if fstype not in ("tmpfs", "hugetlbfs"):
        raise ValueError(f"ephemeral storage with fstype {fstype!r}")
    opts = option_map(spec.options)
    gid = parse_gid(opts[FSGID]) if FSGID in opts else None
    mount_options = [o for o in spec.options if not o.startswith(FSGID + "=")]
    flags, data = fs_mount_options(mount_options)
    # The part that exists, before hugepages are reserved or anything is made.
    check_no_symlinks(spec.mount_point, missing_ok=True)
    if fstype == "hugetlbfs":
        reserve_hugepages(mount_options)
    attached = Attached(spec.mount_point, created=prepare_mount_point(spec.mount_point))
    with undone_on_error(attached):
        mount_at(spec.mount_point, spec.source or fstype, fstype, flags, data)
        attached.mounted = True
        if gid is not None:
            with beneath.opened(spec.mount_point, ROOT.get(), "mount_point", DIR_READ) as fd:
                set_fsgid(fd, gid)
    return attached
