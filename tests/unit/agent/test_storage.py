"""Storage manager: validation, ref-counting and rollback, with the mount-free local driver."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pykata.agent.errors import FailedPrecondition, InvalidArgument
from pykata.agent.mount import MS_BIND, MS_NOSUID, MS_RDONLY, MS_REC, parse_options
from pykata.agent.rpc.convert.storages import storage_specs
from pykata.agent.storage import virtiofs
from pykata.agent.storage.manager import ROOT, FsGroup, StorageManager, StorageSpec
from pykata.agent.storage.options import option_map
from pykata.protocols import agent_pb2, types_pb2


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


async def test_fs_group_ownership(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    (vol / "sub").mkdir(parents=True)
    (vol / "sub" / "file").write_text("x")
    (vol / "sub" / "file").chmod(0o600)
    outside = tmp_path / "outside"
    outside.write_text("not part of the volume")
    outside.chmod(0o600)
    (vol / "link").symlink_to(outside)
    gid = os.getgid()
    manager = StorageManager(base=str(tmp_path))
    spec = StorageSpec(driver="local", mount_point=str(vol), fs_group=FsGroup(gid))
    await manager.add([spec])
    assert stat.S_IMODE((vol / "sub" / "file").stat().st_mode) == 0o660
    sub = (vol / "sub").stat()
    assert sub.st_gid == gid and sub.st_mode & 0o2070 == 0o2070
    assert stat.S_IMODE(outside.stat().st_mode) == 0o600  # the link was not followed


async def test_fs_group_on_root_mismatch_skips_a_fitting_root(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir(mode=0o770)
    vol.chmod(0o770)
    (vol / "file").write_text("x")
    (vol / "file").chmod(0o600)
    manager = StorageManager(base=str(tmp_path))
    policy = FsGroup(os.getgid(), on_root_mismatch=True)
    await manager.add([StorageSpec(driver="local", mount_point=str(vol), fs_group=policy)])
    assert stat.S_IMODE((vol / "file").stat().st_mode) == 0o600  # root already fits
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "file").write_text("x")
    (ro / "file").chmod(0o600)
    spec = StorageSpec(
        driver="local", mount_point=str(ro), options=["ro"], fs_group=FsGroup(os.getgid())
    )
    await manager.add([spec])
    assert stat.S_IMODE((ro / "file").stat().st_mode) == 0o640  # read-only: no group write


def test_protobuf_storage_conversion() -> None:
    storage = agent_pb2.Storage(
        driver="virtio-fs",
        driver_options=["a=b"],
        source="kataShared",
        fstype="virtiofs",
        options=["ro"],
        mount_point="/run/kata-containers/shared/containers",
        fs_group=agent_pb2.FSGroup(group_id=1000, group_change_policy=types_pb2.OnRootMismatch),
    )
    (spec,) = storage_specs([storage])
    assert spec == StorageSpec(
        driver="virtio-fs",
        driver_options=["a=b"],
        source="kataShared",
        fstype="virtiofs",
        options=["ro"],
        mount_point="/run/kata-containers/shared/containers",
        fs_group=FsGroup(1000, on_root_mismatch=True),
    )
    assert storage_specs([agent_pb2.Storage(driver="local")])[0].fs_group is None


@pytest.mark.parametrize("fstype", ["virtiofs", "9p", "tmpfs"])
def test_a_premounted_kata_shared_fs_of_any_type_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fstype: str
) -> None:
    monkeypatch.setattr(virtiofs, "fstype_of", lambda path: fstype)
    monkeypatch.setattr(virtiofs, "mount_at", lambda *args: pytest.fail("mounted again"))
    spec = StorageSpec("virtio-fs", source="kataShared", mount_point=str(tmp_path / "shared"))
    token = ROOT.set(str(tmp_path))
    try:
        attached = virtiofs.attach(spec, None)
    finally:
        ROOT.reset(token)
    assert not attached.mounted
