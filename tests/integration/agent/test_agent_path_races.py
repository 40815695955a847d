"""Overlay layers and the container root swapped for a symlink between the agent's check and
its mount (root).

A host racing its own CopyFile against a storage or container request can replace a
checked layer directory with a symlink in that window; the kernel must still get what was
checked. The race is made deterministic by swapping at the mount call itself.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pykata.agent import mount as mount_module
from pykata.agent.container import bundle as bundle_module
from pykata.agent.container.bundle import Bundle
from pykata.agent.errors import InvalidArgument
from pykata.agent.mount import fstype_of, mount_points, umount_all
from pykata.agent.storage import overlay
from pykata.agent.storage.manager import StorageManager, StorageSpec

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")


@pytest.fixture
def base() -> Iterator[Path]:
    path = Path("/run/kata-containers/sandbox") / f"pykata-race-{secrets.token_hex(4)}"
    path.mkdir(parents=True)
    yield path
    for point in reversed([p for p, _ in mount_points() if p.startswith(str(path) + "/")]):
        umount_all(point)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """Outside /run/kata-containers: what a swapped-in symlink points at."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "file").write_text("outside")
    return path


def swap_for_link(directory: Path, target: Path) -> None:
    """``directory`` moved aside and replaced by a symlink to ``target``."""
    directory.rename(directory.with_name(directory.name + ".moved"))
    directory.symlink_to(target)


def swapping_before(
    real: Callable[..., None], directory: Path, target: Path
) -> Callable[..., None]:
    def swap_then_call(*args: Any, **kwargs: Any) -> None:
        swap_for_link(directory, target)
        real(*args, **kwargs)

    return swap_then_call


@pytest.mark.parametrize("layer", ["lower", "upper"])
async def test_overlay_layer_swapped_for_a_symlink_before_the_mount_is_not_followed(
    base: Path, outside: Path, monkeypatch: pytest.MonkeyPatch, layer: str
) -> None:
    lower, upper, work = base / "lower", base / "upper", base / "work"
    for d in (lower, upper, work):
        d.mkdir()
    (lower / "file").write_text("checked")
    swapped = {"lower": lower, "upper": upper}[layer]
    # Checked, directories made: the layer is swapped as mount(2) is called.
    monkeypatch.setattr(overlay, "mount_at", swapping_before(overlay.mount_at, swapped, outside))
    merged = base / "merged"
    manager = StorageManager()
    await manager.add(
        [
            StorageSpec(
                driver="overlayfs",
                options=[f"lowerdir={lower}", f"upperdir={upper}", f"workdir={work}"],
                mount_point=str(merged),
            )
        ]
    )
    try:
        assert swapped.is_symlink()
        assert (merged / "file").read_text() == "checked"
        (merged / "written").write_text("x")
        assert sorted(p.name for p in outside.iterdir()) == ["file"]  # noqa: ASYNC240
        assert (outside / "file").read_text() == "outside"
        if layer == "upper":
            assert (base / "upper.moved" / "written").exists()
    finally:
        await manager.remove_all()
    assert fstype_of(str(merged)) is None


async def test_overlay_layer_swapped_after_the_check_is_refused_before_the_mount(
    base: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lower, lower2 = base / "lower", base / "lower2"
    lower.mkdir()
    lower2.mkdir()
    real = overlay.prepare_mount_point

    def prepare_then_swap(path: str) -> list[str]:
        made = real(path)
        swap_for_link(lower, outside)
        return made

    monkeypatch.setattr(overlay, "prepare_mount_point", prepare_then_swap)
    merged = base / "merged"
    with pytest.raises(InvalidArgument, match="lowerdir"):
        await StorageManager().add(
            [
                StorageSpec(
                    driver="overlayfs",
                    options=[f"lowerdir={lower2}:{lower}"],
                    mount_point=str(merged),
                )
            ]
        )
    assert fstype_of(str(merged)) is None
    assert not merged.exists()


def bundle_in(base: Path) -> Bundle:
    """A bundle in /run/kata-containers/<cid>, as the agent makes."""
    return Bundle(f"pykata-root-{secrets.token_hex(3)}")


def test_container_root_through_a_symlink_is_refused(base: Path, outside: Path) -> None:
    (base / "link").symlink_to(outside)
    bundle = bundle_in(base)
    try:
        for root in (base / "link", base / "link" / "sub", base / "missing"):
            with pytest.raises(InvalidArgument):
                bundle.create(str(root))
            assert fstype_of(bundle.rootfs) is None
    finally:
        bundle.remove()


def test_container_root_swapped_for_a_symlink_before_the_bind_is_not_followed(
    base: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = base / "rootfs"
    root.mkdir()
    (root / "file").write_text("checked")
    monkeypatch.setattr(bundle_module, "mount", swapping_before(mount_module.mount, root, outside))
    bundle = bundle_in(base)
    try:
        bundle.create(str(root))
        assert root.is_symlink()
        assert (Path(bundle.rootfs) / "file").read_text() == "checked"
    finally:
        bundle.remove()
    assert not os.path.exists(bundle.path)
