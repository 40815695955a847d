"""Storage manager: validation, ref-counting and rollback, with the mount-free local driver."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pykata.agent.mount import MS_BIND, MS_NOSUID, MS_RDONLY, MS_REC, parse_options
from pykata.agent.storage.manager import StorageManager, StorageSpec
from pykata.agent.storage.options import option_map
from pykata.ttrpc.errors import FailedPrecondition, InvalidArgument


def entries(path: Path) -> list[Path]:
    return list(path.iterdir())


def local(path: Path, *options: str) -> StorageSpec:
    return StorageSpec(driver="local", mount_point=str(path), options=list(options))


async def test_refcount_and_removal(tmp_path: Path) -> None:
    manager = StorageManager(base=str(tmp_path))
    vol = tmp_path / "sandbox" / "local" / "vol"
    assert await manager.add([local(vol, "mode=0750")]) == [str(vol)]
    assert stat.S_IMODE(vol.stat().st_mode) == 0o750
    (vol / "data").write_text("kept while referenced")
    assert await manager.add([local(vol)]) == [str(vol)]
    assert manager.refs(str(vol)) == 2
    await manager.remove([str(vol)])
    assert (vol / "data").exists()
    await manager.remove([str(vol) + "/"])
    assert manager.refs(str(vol)) == 0
    assert not vol.exists()
    assert not (tmp_path / "sandbox").exists()  # the directories it made went too


async def test_unknown_driver_and_paths_outside(tmp_path: Path) -> None:
    manager = StorageManager(base=str(tmp_path))
    with pytest.raises(InvalidArgument, match="unsupported storage driver"):
        await manager.add([StorageSpec(driver="floppy", mount_point=str(tmp_path / "x"))])
    for bad in ("/etc/x", str(tmp_path / ".." / "x"), "relative", str(tmp_path)):
        with pytest.raises(InvalidArgument):
            await manager.add([local(Path(bad))])


async def test_failure_rolls_back_the_whole_request(tmp_path: Path) -> None:
    manager = StorageManager(base=str(tmp_path))
    first, second = tmp_path / "a", tmp_path / "b"
    await manager.add([local(first)])
    with pytest.raises(InvalidArgument):
        await manager.add([local(first), local(second, "mode=0999")])
    assert manager.refs(str(first)) == 1
    assert not second.exists()
    with pytest.raises(InvalidArgument):
        await manager.add([local(second), StorageSpec(driver="nope", mount_point=str(first))])
    assert not second.exists()


async def test_same_mount_point_other_driver(tmp_path: Path) -> None:
    manager = StorageManager(base=str(tmp_path))
    await manager.add([local(tmp_path / "v")])
    with pytest.raises(FailedPrecondition):
        await manager.add([StorageSpec(driver="ephemeral", mount_point=str(tmp_path / "v"))])


async def test_symlinked_mount_point_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    manager = StorageManager(base=str(tmp_path))
    with pytest.raises(InvalidArgument, match="symlink"):
        await manager.add([local(tmp_path / "link" / "v")])


async def test_remove_all_and_unknown(tmp_path: Path) -> None:
    manager = StorageManager(base=str(tmp_path))
    await manager.add([local(tmp_path / "a"), local(tmp_path / "b"), local(tmp_path / "a")])
    await manager.remove([str(tmp_path / "never-added")])
    await manager.remove_all()
    assert entries(tmp_path) == []


async def test_preexisting_directory_content_is_not_deleted(tmp_path: Path) -> None:
    vol = tmp_path / "v"
    vol.mkdir()
    (vol / "mine").write_text("x")
    manager = StorageManager(base=str(tmp_path))
    await manager.add([local(vol)])
    await manager.remove([str(vol)])
    assert (vol / "mine").exists()


def test_mount_option_parsing() -> None:
    assert parse_options(["ro", "nosuid,size=64m", "mode=1777"]) == (
        MS_RDONLY | MS_NOSUID,
        "size=64m,mode=1777",
    )
    assert parse_options(["ro", "rw"]) == (0, "")
    assert parse_options(["rbind"]) == (MS_BIND | MS_REC, "")


def test_option_map_as_kata() -> None:
    assert option_map(["mode=0755", "fsgid=10", "a=b=c", "flag"]) == {"mode": "0755", "fsgid": "10"}
