"""Ids and paths from the host: Kata's id rule, no escape from the allowed tree."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pykata.agent.copyfile import copy_file
from pykata.agent.errors import InvalidArgument
from pykata.agent.validation import (
    safe_join,
    validate_container_id,
    validate_exec_id,
    validate_under,
)


@pytest.mark.parametrize("cid", ["a", "abc123", "0abc", "pod_1.ctr-2", "A" * 256])
def test_valid_ids(cid: str) -> None:
    assert validate_container_id(cid) == cid
    assert validate_exec_id(cid) == cid


@pytest.mark.parametrize(
    "cid", ["", "-a", ".a", "_a", "a/b", "../x", "a b", "a\0", "ü", "a\n", "A" * 257]
)
def test_invalid_ids(cid: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_container_id(cid)
    with pytest.raises(InvalidArgument):
        validate_exec_id(cid)


def test_safe_join() -> None:
    assert safe_join("/root/x", "a/b") == "/root/x/a/b"
    assert safe_join("/root/x", "/a/../b") == "/root/x/b"
    assert safe_join("/root/x", "") == "/root/x"
    for bad in ("..", "../y", "a/../../y", "/../../etc/passwd", "a\0b"):
        with pytest.raises(InvalidArgument):
            safe_join("/root/x", bad)


@given(st.text(alphabet="ab./\0", max_size=30))
def test_safe_join_never_escapes(path: str) -> None:
    try:
        joined = safe_join("/r/oot", path)
    except InvalidArgument:
        return
    assert joined == "/r/oot" or joined.startswith("/r/oot/")


def test_validate_under() -> None:
    assert validate_under("/run/kata-containers/a//b/") == "/run/kata-containers/a/b"
    for bad in (
        "",
        "relative/path",
        "/run/kata-containers",
        "/run/kata-containers/../etc",
        "/run/kata-containersX/a",
        "/etc/passwd",
    ):
        with pytest.raises(InvalidArgument):
            validate_under(bad)


def copy(root: Path, path: str, data: bytes = b"", **kw: int) -> None:
    args = {
        "file_size": len(data),
        "file_mode": stat.S_IFREG | 0o644,
        "dir_mode": 0o755,
        "uid": -1,
        "gid": -1,
        "offset": 0,
    }
    args.update(kw)
    copy_file(
        str(root / path) if not path.startswith("/") else path, data=data, root=str(root), **args
    )


def test_copy_file_regular_dir_and_symlink(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    copy(root, "sandbox/a/hosts", b"127.0.0.1 localhost\n")
    assert (root / "sandbox/a/hosts").read_bytes() == b"127.0.0.1 localhost\n"
    assert stat.S_IMODE((root / "sandbox/a/hosts").stat().st_mode) == 0o644
    copy(root, "d", file_mode=stat.S_IFDIR | 0o1750)
    assert stat.S_IMODE((root / "d").stat().st_mode) == 0o1750
    copy(root, "link", b"/etc/passwd", file_mode=stat.S_IFLNK | 0o777)
    assert os.readlink(root / "link") == "/etc/passwd"


def test_copy_file_in_chunks(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    copy(root, "big", b"hello ", file_size=11)
    assert not (root / "big").exists()
    copy(root, "big", b"world", file_size=11, offset=6)
    assert (root / "big").read_bytes() == b"hello world"
    assert not (root / "big.tmp").exists()


def test_copy_file_replaces_existing(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    copy(root, "f", b"old content")
    copy(root, "f", b"new")
    assert (root / "f").read_bytes() == b"new"


@pytest.mark.parametrize(
    "target",
    ["/etc/passwd", "{root}/../escape", "{root}", "{root}/", "{root}/a/../../escape"],
)
def test_copy_file_rejects_escapes(tmp_path: Path, target: str) -> None:
    root = tmp_path / "shared"
    root.mkdir()
    with pytest.raises(InvalidArgument):
        copy(root, target.format(root=root), b"x")
    assert not (tmp_path / "escape").exists()


def test_copy_file_does_not_follow_planted_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    outside = tmp_path / "outside"
    outside.mkdir()
    copy(root, "evil", str(outside).encode(), file_mode=stat.S_IFLNK | 0o777)
    with pytest.raises(InvalidArgument):
        copy(root, "evil/payload", b"x")
    copy(root, "f.tmp", str(outside / "t").encode(), file_mode=stat.S_IFLNK | 0o777)
    with pytest.raises(InvalidArgument):
        copy(root, "f", b"x", file_size=2)
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize(
    "kw",
    [
        {"offset": -1},
        {"file_size": -1},
        {"file_size": 1},  # more data than the file holds
        {"file_mode": stat.S_IFCHR | 0o600},
    ],
)
def test_copy_file_rejects_bad_sizes_and_types(tmp_path: Path, kw: dict[str, int]) -> None:
    with pytest.raises(InvalidArgument):
        copy(tmp_path / "shared", "f", b"abc", **kw)
