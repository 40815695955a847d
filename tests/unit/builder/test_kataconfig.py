"""The Kata configuration kata-image writes: valid TOML the Go shim's clh path accepts."""

from __future__ import annotations

import tomllib
from pathlib import Path

from pykata.builder import kataconfig


def load(tmp_path: Path, flavour: str, debug: bool = False) -> dict[str, dict[str, object]]:
    artifact = tmp_path / ("kata-initrd.img" if flavour == "initrd" else "kata-rootfs.img")
    artifacts = kataconfig.Artifacts(tmp_path / "vmlinuz", flavour, artifact)
    return tomllib.loads(kataconfig.configuration(artifacts, tmp_path / "bin", debug))


def test_initrd_flavour_points_at_our_launcher_and_virtiofsd(tmp_path: Path) -> None:
    config = load(tmp_path, "initrd")
    clh = config["hypervisor"]["clh"]  # type: ignore[index]
    assert clh["path"] == str(tmp_path / "bin" / "kata-clh")
    assert clh["valid_hypervisor_paths"] == [clh["path"]]
    assert clh["virtio_fs_daemon"] == str(tmp_path / "bin" / "kata-virtiofsd")
    assert clh["valid_virtio_fs_daemon_paths"] == [clh["virtio_fs_daemon"]]
    assert clh["kernel"] == str(tmp_path.resolve() / "vmlinuz")
    assert clh["initrd"] == str(tmp_path.resolve() / "kata-initrd.img")
    assert "image" not in clh and clh["shared_fs"] == "virtio-fs"
    # As Kata's own guest kernels: no zeroing on allocation (Debian's kernel has it on).
    assert clh["kernel_params"] == "init_on_alloc=0"
    assert config["agent"]["kata"]["dial_timeout"] >= 90  # type: ignore[index]
    assert config["runtime"]["enable_debug"] is False


def test_image_flavour_boots_from_a_virtio_blk_root(tmp_path: Path) -> None:
    clh = load(tmp_path, "image")["hypervisor"]["clh"]  # type: ignore[index]
    assert clh["image"] == str(tmp_path.resolve() / "kata-rootfs.img")
    assert "initrd" not in clh
    assert clh["rootfs_type"] == "ext4" and clh["disable_image_nvdimm"] is True
    assert clh["kernel_params"].split() == [
        "init_on_alloc=0",
        "systemd.unit=kata-containers.target",
    ]


def test_debug_switches(tmp_path: Path) -> None:
    config = load(tmp_path, "initrd", debug=True)
    assert config["hypervisor"]["clh"]["enable_debug"] is True  # type: ignore[index]
    assert config["agent"]["kata"]["enable_debug"] is True  # type: ignore[index]
    assert config["runtime"]["enable_debug"] is True


def test_paths_with_quotes_stay_valid_toml(tmp_path: Path) -> None:
    odd = tmp_path / 'we"ird\\dir'
    odd.mkdir()
    clh = load(odd, "initrd")["hypervisor"]["clh"]  # type: ignore[index]
    assert clh["initrd"] == str(odd.resolve() / "kata-initrd.img")
