"""The busybox test rootfs maker."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pykata.host.rootfs import BUSYBOX, make_busybox_rootfs


@pytest.fixture(autouse=True)
def _busybox() -> None:
    if not BUSYBOX.exists():
        pytest.fail(f"{BUSYBOX} is missing: `just setup` installs busybox-static")


def test_rootfs_layout(tmp_path: Path) -> None:
    root = make_busybox_rootfs(tmp_path / "rootfs")
    assert (root / "bin" / "busybox").is_file()
    assert os.readlink(root / "bin" / "sh") == "/bin/busybox"
    for name in ("proc", "sys", "dev", "tmp", "run"):
        assert (root / name).is_dir() and not any((root / name).iterdir())
    assert (root / "etc" / "passwd").read_text().startswith("root:x:0:0:")
    assert "nogroup" in (root / "etc" / "group").read_text()
    # Made twice into the same place: still fine (links already there).
    make_busybox_rootfs(root)


def test_applets_run_through_the_links(tmp_path: Path) -> None:
    root = make_busybox_rootfs(tmp_path / "rootfs")
    # Relative to the rootfs the links point to /bin/busybox; run the binary by its path.
    done = subprocess.run(
        [str(root / "bin" / "busybox"), "sh", "-c", "echo ok"], capture_output=True, text=True
    )
    assert done.stdout == "ok\n"
    assert (root / "usr" / "bin" / "env").is_symlink()


def test_missing_busybox(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="busybox-static"):
        make_busybox_rootfs(tmp_path / "r", busybox=tmp_path / "none")
