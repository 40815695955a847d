"""User names of a container process resolved in the container's own /etc/passwd and
/etc/group, read below its rootfs without ever leaving it (symlinks resolve inside it)."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pykata.agent.errors import InvalidArgument

MAX_SYMLINKS = 40
MAX_DB_SIZE = 4 << 20
MAX_ID = (1 << 32) - 2


@dataclass(frozen=True)
class StringUser:
    """A user given by name or number (Kata's StringUser): user, group, extra groups."""

    uid: str
    gid: str = ""
    additional_gids: Sequence[str] = field(default_factory=tuple)


def open_in_root(root: str, path: str) -> int:
    """A read-only fd of ``path`` taken as if ``root`` were ``/``: ``..`` stops at the root
    and absolute symlinks restart from it, so nothing outside ``root`` can be reached."""
    flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
    dirs = [os.open(root, flags | os.O_DIRECTORY)]
    pending = [p for p in path.split("/") if p not in ("", ".")]
    hops = 0
    try:
        while pending:
            name = pending.pop(0)
            if name == "..":
                if len(dirs) > 1:
                    os.close(dirs.pop())
                continue
            fd = os.open(name, flags, dir_fd=dirs[-1])
            mode = os.fstat(fd).st_mode
            if stat.S_ISLNK(mode):
                os.close(fd)
                hops += 1
                if hops > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
                target = os.readlink(name, dir_fd=dirs[-1])
                if target.startswith("/"):
                    while len(dirs) > 1:
                        os.close(dirs.pop())
                pending = [p for p in target.split("/") if p not in ("", ".")] + pending
            elif stat.S_ISDIR(mode) and pending:
                dirs.append(fd)
            elif pending:
                os.close(fd)
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
            else:
                try:
                    # Reopening the O_PATH fd through /proc cannot follow anything else.
                    return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
                finally:
                    os.close(fd)
        raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    finally:
        for fd in dirs:
            os.close(fd)


def _read_db(root: str, path: str) -> list[list[str]]:
    """The colon-separated records of a passwd-style file; a missing file has none."""
    try:
        fd = open_in_root(root, path)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path} in the container: {exc.strerror}") from exc
    with open(fd, "rb") as f:
        data = f.read(MAX_DB_SIZE + 1)
    if len(data) > MAX_DB_SIZE:
        raise InvalidArgument(f"{path} in the container is larger than {MAX_DB_SIZE} bytes")
    records = []
    for line in data.decode(errors="replace").splitlines():
        if line and not line.startswith("#"):
            records.append(line.split(":"))
    return records


def _number(text: str) -> int | None:
    if not text.isdigit():
        return None
    value = int(text)
    return value if value <= MAX_ID else None


def _id(record: list[str], index: int) -> int | None:
    return _number(record[index]) if len(record) > index else None


def resolve(root: str, user: StringUser) -> dict[str, Any]:
    """The OCI ``user`` (uid, gid, additionalGids) for ``user`` in the container at ``root``.

    Unknown names are refused; a number missing from /etc/passwd is taken as it is (with
    group 0 unless a group is given), as runc does.
    """
    if not user.uid:
        raise InvalidArgument("a string user needs a user name or id")
    passwd = [r for r in _read_db(root, "/etc/passwd") if len(r) >= 4]
    entry = next((r for r in passwd if r[0] == user.uid), None)
    number = _number(user.uid)
    if entry is None and number is not None:
        entry = next((r for r in passwd if _id(r, 2) == number), None)
    if entry is None and number is None:
        raise InvalidArgument(f"user {user.uid!r} not found in the container's /etc/passwd")
    uid = _id(entry, 2) if entry is not None else number
    if uid is None:
        raise InvalidArgument(f"user {user.uid!r} has an invalid uid in /etc/passwd")
    groups = [r for r in _read_db(root, "/etc/group") if len(r) >= 3]

    def group_id(name: str) -> int:
        found = next((_id(r, 2) for r in groups if r[0] == name), None)
        if found is None:
            found = _number(name)
        if found is None:
            raise InvalidArgument(f"group {name!r} not found in the container's /etc/group")
        return found

    primary = (_id(entry, 3) if entry is not None else 0) or 0
    gid = group_id(user.gid) if user.gid else primary
    additional: list[int] = []
    if entry is not None:
        for record in groups:
            members = record[3].split(",") if len(record) > 3 else []
            member_gid = _id(record, 2)
            if entry[0] in members and member_gid is not None:
                additional.append(member_gid)
    additional += [group_id(name) for name in user.additional_gids]
    result: dict[str, Any] = {"uid": uid, "gid": gid}
    if additional:
        result["additionalGids"] = list(dict.fromkeys(additional))
    return result


def resolve_process_user(
    root: str, process: dict[str, Any], string_user: StringUser | None
) -> None:
    """Give ``process`` (OCI JSON) numeric ids for a string user or an OCI ``username``.

    The string user replaces the process's user; a username keeps the extra gids given.
    """
    current = process.get("user") or {}
    if string_user is not None and string_user.uid:
        resolved = resolve(root, string_user)
    elif current.get("username"):
        resolved = resolve(root, StringUser(current["username"]))
        extra = resolved.get("additionalGids", []) + list(current.get("additionalGids", []))
        if extra:
            resolved["additionalGids"] = list(dict.fromkeys(extra))
    else:
        return
    if "umask" in current:
        resolved["umask"] = current["umask"]
    process["user"] = resolved
