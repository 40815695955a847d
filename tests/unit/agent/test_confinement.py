"""Host-given paths stay inside the sandbox: one regression test per attack found in the
confinement study (the pure parts, on tmp_path trees; no root, no mounts)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pykata.agent import beneath
from pykata.agent.container.spec import rewrite_spec
from pykata.agent.copyfile import copy_file
from pykata.agent.errors import FailedPrecondition, InvalidArgument, NotFound
from pykata.agent.storage import bind
from pykata.agent.storage.manager import FsGroup, StorageManager, StorageSpec
from pykata.agent.storage.volumes import volume_stats
from pykata.agent.validation import validate_container_id


def rewrite(mounts: list[dict[str, object]]) -> dict[str, Any]:
    spec = {
        "process": {"args": ["sh"]},
        "root": {"path": "rootfs"},
        "mounts": mounts,
        "linux": {"namespaces": []},
    }
    return rewrite_spec(spec, container_id="c1", rootfs="/r", namespaces={}).spec


@pytest.fixture(params=[True, False], ids=["openat2", "nofollow-walk"])
def resolver(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test runs with openat2 and with the O_NOFOLLOW walk of kernels without it."""
    beneath.use_openat2(request.param)
    yield
    beneath.use_openat2(True)


@pytest.fixture
def tree(tmp_path: Path, resolver: None) -> tuple[Path, Path]:
    """(base, outside): ``base/shared/link`` is a symlink to ``outside`` (as CopyFile plants)."""
    base, outside = tmp_path / "base", tmp_path / "outside"
    (base / "shared").mkdir(parents=True)
    outside.mkdir()
    (outside / "victim").write_text("untouched")
    (base / "shared" / "link").symlink_to(outside)
    return base, outside


def untouched(outside: Path) -> bool:
    return (
        sorted(p.name for p in outside.iterdir()) == ["victim"]
        and (outside / "victim").read_text() == "untouched"
    )


def file_mode(kind: int = stat.S_IFREG) -> int:
    return kind | 0o644


# 1. Side effects before checks.


@pytest.mark.parametrize("driver", ["local", "ephemeral"])
async def test_mount_point_through_a_planted_symlink_makes_nothing_outside(
    tree: tuple[Path, Path], driver: str
) -> None:
    base, outside = tree
    manager = StorageManager(base=str(base))
    point = base / "shared" / "link" / "made" / "deeper"
    with pytest.raises(InvalidArgument, match="symlink"):
        await manager.add([StorageSpec(driver=driver, mount_point=str(point))])
    assert untouched(outside)


async def test_overlay_create_directory_through_a_symlink_makes_nothing(
    tree: tuple[Path, Path],
) -> None:
    base, outside = tree
    (base / "lower").mkdir()
    manager = StorageManager(base=str(base))
    spec = StorageSpec(
        driver="overlayfs",
        driver_options=[
            "io.katacontainers.volume.overlayfs.create_directory=" + str(base / "made"),
            "io.katacontainers.volume.overlayfs.create_directory="
            + str(base / "shared" / "link" / "made"),
        ],
        options=[f"lowerdir={base / 'lower'}"],
        mount_point=str(base / "merged"),
    )
    with pytest.raises(InvalidArgument, match="create_directory"):
        await manager.add([spec])
    assert untouched(outside)
    assert not (base / "made").exists()  # checked all before making the first one
    assert not (base / "merged").exists()


def test_make_dirs_rolls_back_what_it_made(tmp_path: Path, resolver: None) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "file").write_text("")
    with pytest.raises(InvalidArgument):
        beneath.make_dirs(str(tmp_path / "a" / "file" / "x"), str(tmp_path), "mount_point")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["file"]
    made = beneath.make_dirs(str(tmp_path / "b" / "c"), str(tmp_path), "mount_point")
    assert made == [str(tmp_path / "b" / "c"), str(tmp_path / "b")]


# 2. bind/rbind in a storage's options.


@pytest.mark.parametrize("driver", ["ephemeral", "virtio-fs", "overlayfs"])
@pytest.mark.parametrize("option", ["bind", "rbind", "remount", "rshared", "ro,bind"])
async def test_bind_option_cannot_turn_a_storage_into_a_bind_of_any_path(
    tree: tuple[Path, Path], driver: str, option: str
) -> None:
    base, outside = tree
    (base / "lower").mkdir()
    options = [option] + ([f"lowerdir={base / 'lower'}"] if driver == "overlayfs" else [])
    spec = StorageSpec(
        driver=driver, source=str(outside), options=options, mount_point=str(base / "m")
    )
    with pytest.raises(InvalidArgument, match="bind, rbind"):
        await StorageManager(base=str(base)).add([spec])
    assert not (base / "m").exists()
    assert untouched(outside)


# 3. Overlay layers through symlinks.


@pytest.mark.parametrize("key", ["lowerdir", "upperdir", "workdir"])
async def test_overlay_layer_through_a_symlink_is_refused(
    tree: tuple[Path, Path], key: str
) -> None:
    base, _ = tree
    for name in ("lower", "upper", "work"):
        (base / name).mkdir()
    layers = {
        "lowerdir": str(base / "lower"),
        "upperdir": str(base / "upper"),
        "workdir": str(base / "work"),
    }
    layers[key] = str(base / "shared" / "link")
    spec = StorageSpec(
        driver="overlayfs",
        options=[f"{k}={v}" for k, v in layers.items()],
        mount_point=str(base / "merged"),
    )
    with pytest.raises(InvalidArgument, match=f"options {key}"):
        await StorageManager(base=str(base)).add([spec])
    assert not (base / "merged").exists()


# 4. watchable-bind's sync follows an entry that changed from symlink to directory.


def test_watchable_sync_does_not_follow_a_symlink_that_became_a_directory(
    tmp_path: Path, resolver: None
) -> None:
    source, target, outside = tmp_path / "src", tmp_path / "dst", tmp_path / "outside"
    for d in (source, target, outside):
        d.mkdir()
    os.chmod(outside, 0o700)
    (source / "d").symlink_to(outside)
    old = bind.scan(str(source))
    bind.sync(str(source), str(target), {}, old)
    assert (target / "d").is_symlink()
    (source / "d").unlink()
    (source / "d").mkdir(mode=0o777)
    (source / "d" / "planted").write_text("written through the link?")
    new = bind.scan(str(source))
    bind.sync(str(source), str(target), old, new)
    assert list(outside.iterdir()) == []
    assert stat.S_IMODE(outside.stat().st_mode) == 0o700
    assert not (target / "d").is_symlink()
    assert (target / "d" / "planted").read_text() == "written through the link?"


def test_watchable_sync_does_not_copy_a_file_that_became_a_symlink(
    tmp_path: Path, resolver: None
) -> None:
    source, target = tmp_path / "src", tmp_path / "dst"
    source.mkdir()
    target.mkdir()
    (tmp_path / "secret").write_text("guest secret")
    (source / "f").write_text("config")
    snapshot = bind.scan(str(source))
    (source / "f").unlink()
    (source / "f").symlink_to(tmp_path / "secret")  # swapped after the scan
    bind.sync(str(source), str(target), {}, snapshot)
    assert not (target / "f").exists() or (target / "f").read_text() != "guest secret"


# 5. GetVolumeStats follows a symlink.


async def test_volume_stats_through_a_symlink_is_refused(tree: tuple[Path, Path]) -> None:
    base, _ = tree
    with pytest.raises(InvalidArgument, match="volume_guest_path"):
        await volume_stats(str(base / "shared" / "link"), root=str(base))
    with pytest.raises(NotFound):
        await volume_stats(str(base / "shared" / "missing"), root=str(base))
    assert (await volume_stats(str(base / "shared"), root=str(base))).bytes.total > 0


# 6. OCI bind-mount sources anywhere in the guest.


@pytest.mark.parametrize(
    "mount",
    [
        {"destination": "/x", "type": "bind", "source": "/etc"},
        {"destination": "/x", "type": "none", "source": "/", "options": ["rbind"]},
        {"destination": "/x", "type": "bind", "source": "relative"},
        {"destination": "/x", "type": "bind", "source": "/run/kata-containers"},
        {"destination": "/x", "type": "bind", "source": "/dev/shm/../../etc"},
    ],
)
def test_bind_source_outside_kata_tree_is_refused(mount: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument, match="source"):
        rewrite([mount])


def test_bind_source_through_a_planted_symlink_is_refused(
    tree: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, _ = tree
    monkeypatch.setattr(beneath, "BIND_ROOTS", (str(base), "/dev/shm"))
    mount = {"destination": "/x", "type": "bind", "source": str(base / "shared" / "link" / "f")}
    with pytest.raises(InvalidArgument, match="symlink"):
        rewrite([mount])
    ok = {"destination": "/x", "type": "bind", "source": str(base / "shared" / "later")}
    assert rewrite([ok])["mounts"][0]["source"] == ok["source"]
    shm = {"destination": "/dev/shm", "type": "bind", "source": "/dev/shm", "options": ["rbind"]}
    assert rewrite([shm])["mounts"][0]["source"] == "/dev/shm"


# 11. CopyFile over directories, reserved ids, long names, deep trees, offset 0.


def test_container_id_sandbox_is_reserved() -> None:
    for cid in ("sandbox", "shared", "image"):
        with pytest.raises(InvalidArgument, match="reserved"):
            validate_container_id(cid)
    assert validate_container_id("sandbox-1") == "sandbox-1"


def test_copyfile_too_long_name_is_invalid_argument(tmp_path: Path, resolver: None) -> None:
    for path in (
        f"{tmp_path}/{'n' * 300}",
        f"{tmp_path}/a/{'n' * 300}/b",
        f"{tmp_path}/" + "d/" * 2100 + "f",
        f"{tmp_path}/{'n' * 253}",  # its .tmp would be too long
    ):
        with pytest.raises(InvalidArgument):
            copy_file(
                path,
                file_size=1,
                file_mode=file_mode(),
                dir_mode=0o755,
                uid=-1,
                gid=-1,
                offset=0,
                data=b"x",
                root=str(tmp_path),
            )


def test_copyfile_file_over_a_deep_tree_answers_and_deletes_it_whole(
    tmp_path: Path, resolver: None
) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)
    os.mkdir("top", dir_fd=fd)
    current = os.open("top", os.O_RDONLY, dir_fd=fd)
    os.close(fd)
    for _ in range(1500):  # deeper than Python's recursion limit
        os.mkdir("d", dir_fd=current)
        nxt = os.open("d", os.O_RDONLY, dir_fd=current)
        os.close(current)
        current = nxt
    os.close(current)
    copy_file(
        f"{tmp_path}/top",
        file_size=3,
        file_mode=file_mode(),
        dir_mode=0o755,
        uid=-1,
        gid=-1,
        offset=0,
        data=b"new",
        root=str(tmp_path),
    )
    assert (tmp_path / "top").read_bytes() == b"new"


def test_copyfile_file_over_a_directory_with_a_mount_deletes_nothing(
    tmp_path: Path, resolver: None
) -> None:
    (tmp_path / "top" / "mnt").mkdir(parents=True)
    (tmp_path / "top" / "keep").write_text("kept")
    fd = os.open(tmp_path, os.O_PATH)
    try:
        with pytest.raises(FailedPrecondition, match="mount"):
            beneath.remove_tree(fd, "top", field="f", mounts=[str(tmp_path / "top" / "mnt")])
    finally:
        os.close(fd)
    assert (tmp_path / "top" / "keep").read_text() == "kept"


def test_copyfile_at_offset_0_keeps_the_existing_file_until_complete(
    tmp_path: Path, resolver: None
) -> None:
    def chunk(offset: int, data: bytes, size: int) -> None:
        copy_file(
            f"{tmp_path}/cfg",
            file_size=size,
            file_mode=file_mode(),
            dir_mode=0o755,
            uid=-1,
            gid=-1,
            offset=offset,
            data=data,
            root=str(tmp_path),
        )

    chunk(0, b"old", 3)
    chunk(0, b"new-", 8)
    assert (tmp_path / "cfg").read_bytes() == b"old"  # readers still see the old file
    chunk(4, b"file", 8)
    assert (tmp_path / "cfg").read_bytes() == b"new-file"


def test_copyfile_symlink_replaces_a_symlink_atomically(tmp_path: Path, resolver: None) -> None:
    for target in (b"one", b"two"):
        copy_file(
            f"{tmp_path}/..data",
            file_size=len(target),
            file_mode=file_mode(stat.S_IFLNK),
            dir_mode=0o755,
            uid=-1,
            gid=-1,
            offset=0,
            data=target,
            root=str(tmp_path),
        )
        assert os.readlink(tmp_path / "..data") == target.decode()
    assert sorted(os.listdir(tmp_path)) == ["..data"]


async def test_fs_group_does_not_follow_links_out_of_a_shared_volume(
    tree: tuple[Path, Path],
) -> None:
    base, outside = tree
    volume = base / "vol"
    (volume / "sub").mkdir(parents=True)
    (volume / "sub" / "to-victim").symlink_to(outside / "victim")
    (volume / "to-outside").symlink_to(outside)
    before = (outside / "victim").stat()
    spec = StorageSpec(driver="local", mount_point=str(volume), fs_group=FsGroup(gid=4242))
    await StorageManager(base=str(base)).add([spec])
    assert (volume / "sub").stat().st_gid == 4242
    assert (volume / "sub" / "to-victim").lstat().st_gid == 4242
    after = (outside / "victim").stat()
    assert (after.st_gid, after.st_mode) == (before.st_gid, before.st_mode)
    assert outside.stat().st_gid != 4242


async def test_local_storage_with_a_deep_tree_is_removed_whole(tmp_path: Path) -> None:
    manager = StorageManager(base=str(tmp_path))
    volume = tmp_path / "local" / "vol"
    await manager.add([StorageSpec(driver="local", mount_point=str(volume))])
    current = os.open(volume, os.O_RDONLY)
    for _ in range(1500):  # what a container may leave in its emptyDir
        os.mkdir("d", dir_fd=current)
        nxt = os.open("d", os.O_RDONLY, dir_fd=current)
        os.close(current)
        current = nxt
    os.close(current)
    await manager.remove([str(volume)])
    assert not (tmp_path / "local").exists()
