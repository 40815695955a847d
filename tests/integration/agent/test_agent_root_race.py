"""The container root swapped for a symlink between the agent's check and its bind (root)."""

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

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")


@pytest.fixture
def base() -> Iterator[Path]:
    path = Path("/run/kata-containers/sandbox") / f"pykata-root-{secrets.token_hex(4)}"
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


def swapping_before(
    real: Callable[..., None], directory: Path, target: Path
) -> Callable[..., None]:
    """``real`` called once ``directory`` is moved aside and replaced by a link to ``target``."""

    def swap_then_call(*args: Any, **kwargs: Any) -> None:
        directory.rename(directory.with_name(directory.name + ".moved"))
        directory.symlink_to(target)
        real(*args, **kwargs)

    return swap_then_call


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
