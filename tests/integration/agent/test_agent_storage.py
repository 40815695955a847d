"""Storage drivers with real mounts (root): tmpfs, overlay, bind, ref-counting, rollback.

These drive the StorageManager in-process, under a private directory of
/run/kata-containers, so no agent is needed and nothing else on the host is touched.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pykata.agent.errors import FailedPrecondition, InvalidArgument
from pykata.agent.mount import fstype_of, mount_points
from pykata.agent.storage import bind
from pykata.agent.storage.manager import StorageManager, StorageSpec

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")


@pytest.fixture
def base() -> Iterator[Path]:
    path = Path("/run/kata-containers/sandbox") / f"pykata-storage-{secrets.token_hex(4)}"
    path.mkdir(parents=True)
    yield path
    leftover = [p for p, _ in mount_points() if p.startswith(str(path) + "/")]
    shutil.rmtree(path, ignore_errors=True)
    assert leftover == [], "a test left mounts behind"


def tmpfs(path: Path, *options: str) -> StorageSpec:
    return StorageSpec(
        driver="ephemeral",
        source="tmpfs",
        fstype="tmpfs",
        options=list(options),
        mount_point=str(path),
    )


def mounted(path: Path) -> str | None:
    return fstype_of(str(path))


async def test_tmpfs_refcount(base: Path) -> None:
    manager = StorageManager()
    point = base / "ephemeral" / "scratch"
    await manager.add([tmpfs(point, "size=4m")])
    await manager.add([tmpfs(point, "size=4m")])
    assert mounted(point) == "tmpfs"
    assert os.statvfs(point).f_blocks * os.statvfs(point).f_frsize == 4 * 1024 * 1024
    await manager.remove([str(point)])
    assert mounted(point) == "tmpfs"  # still referenced once
    await manager.remove([str(point)])
    assert mounted(point) is None
    assert not point.exists() and not (base / "ephemeral").exists()


async def test_overlay_and_bind(base: Path) -> None:
    lower, upper, work = base / "lower", base / "upper", base / "work"
    for d in (lower, upper, work):
        d.mkdir()
    (lower / "file").write_text("from lower")
    (base / "src").mkdir()
    (base / "src" / "cfg").write_text("config")
    manager = StorageManager()
    merged, bound = base / "merged", base / "bound"
    await manager.add(
        [
            StorageSpec(
                driver="overlayfs",
                fstype="overlay",
                options=[f"lowerdir={lower}", f"upperdir={upper}", f"workdir={work}"],
                mount_point=str(merged),
            ),
            StorageSpec(driver="watchable-bind", source=str(base / "src"), mount_point=str(bound)),
        ]
    )
    assert (merged / "file").read_text() == "from lower"
    (merged / "new").write_text("x")
    assert (upper / "new").exists()
    assert (bound / "cfg").read_text() == "config"
    await manager.remove_all()
    assert mounted(merged) is None and mounted(bound) is None
    assert (base / "src" / "cfg").exists()


async def wait_for(check: Callable[[], bool], within: float = 10.0) -> None:
    """Until ``check()`` holds (the watcher polls; this only bounds the wait)."""
    for _ in range(int(within / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{check} still false after {within}s")


def content(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


async def test_watchable_bind_copies_and_follows_changes(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bind, "WATCH_INTERVAL", 0.05)
    source, target = base / "configmap", base / "watchable" / "config"
    (source / "sub").mkdir(parents=True)
    (source / "key").write_text("v1")
    (source / "sub" / "nested").write_text("n")
    (source / "link").symlink_to("key")
    manager = StorageManager()
    spec = StorageSpec(driver="watchable-bind", source=str(source), mount_point=str(target))
    await manager.add([spec])
    assert mounted(target) == "tmpfs"
    assert content(target / "key") == "v1" and content(target / "sub" / "nested") == "n"
    assert os.readlink(target / "link") == "key"
    (source / "key").write_text("v2 longer")
    (source / "new").write_text("added")
    (source / "sub" / "nested").unlink()
    await wait_for(lambda: content(target / "key") == "v2 longer")
    await wait_for(lambda: content(target / "new") == "added")
    await wait_for(lambda: content(target / "sub" / "nested") is None)
    await manager.remove([str(target)])
    assert mounted(target) is None and not target.exists()


async def test_watchable_bind_falls_back_to_a_bind_mount(base: Path) -> None:
    source, target = base / "big", base / "watchable" / "big"
    source.mkdir()
    for index in range(bind.MAX_ENTRIES + 1):
        (source / f"f{index}").write_text("x")
    single = base / "single-file"
    single.write_text("one")
    manager = StorageManager()
    await manager.add(
        [
            StorageSpec(driver="watchable-bind", source=str(source), mount_point=str(target)),
            StorageSpec(
                driver="watchable-bind", source=str(single), mount_point=str(base / "w" / "f")
            ),
        ]
    )
    assert mounted(target) != "tmpfs" and content(target / "f0") == "x"
    assert content(base / "w" / "f") == "one"
    await manager.remove_all()
    assert mounted(target) is None


async def test_overlay_rw_per_container(base: Path) -> None:
    lower = base / "lower"
    lower.mkdir()
    cid = f"pykata-ovl-{secrets.token_hex(3)}"
    manager = StorageManager()
    merged = base / "rootfs"
    try:
        await manager.add(
            [
                StorageSpec(
                    driver="overlayfs",
                    options=[f"lowerdir={lower}", "io.katacontainers.fs-opt.overlay-rw"],
                    mount_point=str(merged),
                )
            ],
            cid=cid,
        )
        (merged / "written").write_text("x")
        assert os.path.exists(f"/run/kata-containers/{cid}/upper/written")  # noqa: ASYNC240
        await manager.remove([str(merged)])
    finally:
        shutil.rmtree(f"/run/kata-containers/{cid}", ignore_errors=True)


async def test_overlay_layers_must_stay_inside(base: Path) -> None:
    manager = StorageManager()
    with pytest.raises(InvalidArgument):
        await manager.add(
            [
                StorageSpec(
                    driver="overlayfs", options=["lowerdir=/etc"], mount_point=str(base / "m")
                )
            ]
        )
    with pytest.raises(InvalidArgument, match="container id"):
        await manager.add(
            [
                StorageSpec(
                    driver="overlayfs",
                    options=[f"lowerdir={base}", "io.katacontainers.fs-opt.overlay-rw"],
                    mount_point=str(base / "m"),
                )
            ]
        )


async def test_failed_mount_rolls_earlier_ones_back(base: Path) -> None:
    manager = StorageManager()
    good = base / "good"
    # No virtio-fs device on this host: the second mount fails, the first is undone.
    with pytest.raises(FailedPrecondition):
        await manager.add(
            [
                tmpfs(good),
                StorageSpec(driver="virtio-fs", source="noSuchTag", mount_point=str(base / "v")),
            ]
        )
    assert mounted(good) is None
    assert not good.exists() and not (base / "v").exists()


async def test_bad_driver_options(base: Path) -> None:
    manager = StorageManager()
    with pytest.raises(InvalidArgument):
        await manager.add([tmpfs(base / "e", "fsgid=abc")])
    with pytest.raises(InvalidArgument):
        await manager.add(
            [StorageSpec(driver="ephemeral", fstype="ext4", mount_point=str(base / "e"))]
        )
    with pytest.raises(InvalidArgument):
        await manager.add(
            [StorageSpec(driver="watchable-bind", source="/etc", mount_point=str(base / "b"))]
        )
    assert not (base / "e").exists() and not (base / "b").exists()


def hugepages_2m() -> Path:
    return Path("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")


@pytest.mark.skipif(not hugepages_2m().exists(), reason="no 2 MiB hugepage support")
async def test_hugetlbfs(base: Path) -> None:
    # Ask for exactly the pages the host already has reserved: nothing changes for it.
    pages = int(hugepages_2m().read_text())
    manager = StorageManager()
    point = base / "hugepages"
    await manager.add(
        [
            StorageSpec(
                driver="ephemeral",
                source="nodev",
                fstype="hugetlbfs",
                options=[f"pagesize={2 << 20}", f"size={pages * (2 << 20)}"],
                mount_point=str(point),
            )
        ]
    )
    assert mounted(point) == "hugetlbfs"
    await manager.remove([str(point)])
    assert mounted(point) is None
    with pytest.raises(InvalidArgument, match="pagesize"):
        await manager.add(
            [StorageSpec(driver="ephemeral", fstype="hugetlbfs", mount_point=str(point))]
        )
