"""User names resolved in the container's /etc/passwd and /etc/group, inside its rootfs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pykata.agent.errors import InvalidArgument
from pykata.agent.process.user import StringUser, open_in_root, resolve, resolve_process_user

PASSWD = """root:x:0:0:root:/root:/bin/sh
# a comment
daemon:x:1:1::/:/bin/false
app:x:1000:1000:App:/home/app:/bin/sh
broken:x:notanumber:1::/:/bin/sh
"""
GROUP = """root:x:0:
audio:x:29:app,other
video:x:44:app
app:x:1000:
users:x:100:
"""


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    return root


def test_a_name_resolves_with_its_groups(rootfs: Path) -> None:
    assert resolve(str(rootfs), StringUser("app")) == {
        "uid": 1000,
        "gid": 1000,
        "additionalGids": [29, 44],
    }


def test_group_and_additional_groups_by_name_or_number(rootfs: Path) -> None:
    user = StringUser("daemon", "users", ("video", "7"))
    assert resolve(str(rootfs), user) == {"uid": 1, "gid": 100, "additionalGids": [44, 7]}


def test_numbers_need_no_passwd_entry(rootfs: Path) -> None:
    assert resolve(str(rootfs), StringUser("1000")) == {
        "uid": 1000,
        "gid": 1000,
        "additionalGids": [29, 44],
    }
    assert resolve(str(rootfs), StringUser("4242")) == {"uid": 4242, "gid": 0}
    assert resolve(str(rootfs), StringUser("4242", "4243")) == {"uid": 4242, "gid": 4243}


@pytest.mark.parametrize(
    ("user", "message"),
    [
        (StringUser("nobody"), "user 'nobody' not found in the container's /etc/passwd"),
        (StringUser("app", "staff"), "group 'staff' not found"),
        (StringUser("app", "", ("wheel",)), "group 'wheel' not found"),
        (StringUser("broken"), "invalid uid"),
        (StringUser("99999999999"), "not found"),
        (StringUser(""), "needs a user name or id"),
    ],
)
def test_unknown_names_are_refused(rootfs: Path, user: StringUser, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        resolve(str(rootfs), user)


def test_no_passwd_file(tmp_path: Path) -> None:
    assert resolve(str(tmp_path), StringUser("5")) == {"uid": 5, "gid": 0}
    with pytest.raises(InvalidArgument, match="'app' not found"):
        resolve(str(tmp_path), StringUser("app"))


def test_symlinks_resolve_inside_the_rootfs(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("evil:x:0:0::/:/bin/sh\n")
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "lib").mkdir()
    (root / "lib" / "passwd").write_text("app:x:7:7::/:/bin/sh\n")
    # Absolute and climbing links both land inside the rootfs, never in "outside".
    os.symlink(str(outside / "passwd"), root / "etc" / "group")
    os.symlink("../../../../lib/passwd", root / "etc" / "passwd")
    assert resolve(str(root), StringUser("app")) == {"uid": 7, "gid": 7}
    with pytest.raises(InvalidArgument, match="'evil' not found"):
        resolve(str(root), StringUser("evil"))
    os.symlink("/lib/passwd", root / "etc" / "abs")
    fd = open_in_root(str(root), "/etc/abs")
    with open(fd) as f:
        assert f.read().startswith("app:")


def test_symlink_loops_are_refused(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    os.symlink("passwd", tmp_path / "etc" / "passwd")
    with pytest.raises(InvalidArgument, match="cannot read /etc/passwd"):
        resolve(str(tmp_path), StringUser("app"))


def test_process_user_from_string_user_or_username(rootfs: Path) -> None:
    process: dict[str, Any] = {"user": {"uid": 0, "gid": 0, "umask": 18}}
    resolve_process_user(str(rootfs), process, StringUser("daemon"))
    assert process["user"] == {"uid": 1, "gid": 1, "umask": 18}
    process = {"user": {"uid": 0, "gid": 0, "username": "app", "additionalGids": [5]}}
    resolve_process_user(str(rootfs), process, None)
    assert process["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [29, 44, 5]}
    numeric: dict[str, Any] = {"user": {"uid": 3, "gid": 4}}
    resolve_process_user(str(rootfs), numeric, None)
    assert numeric["user"] == {"uid": 3, "gid": 4}
