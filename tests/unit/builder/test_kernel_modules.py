"""Choosing Debian kernel modules and their dependencies from modules.dep."""

from __future__ import annotations

import json
import lzma
from pathlib import Path

import pytest

from pykata.builder import kernel
from pykata.builder.stages import BuildError, Stages

VSOCK = "kernel/net/vmw_vsock/vsock.ko.xz"
COMMON = "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko.xz"
VIRTIO = "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko.xz"
MODULES_DEP = f"""\
{VSOCK}:
{COMMON}: {VSOCK}
{VIRTIO}: {COMMON} {VSOCK}
kernel/fs/overlayfs/overlay.ko.xz:
kernel/drivers/scsi/sd_mod.ko: kernel/drivers/scsi/scsi_common.ko
kernel/drivers/scsi/scsi_common.ko:
"""


def test_module_name_normalises_suffix_and_dashes() -> None:
    assert kernel.module_name("kernel/a/vmw_vsock_virtio_transport.ko.xz") == (
        "vmw_vsock_virtio_transport"
    )
    assert kernel.module_name("kernel/a/sd-mod.ko") == "sd_mod"
    assert kernel.module_name("kernel/fs/ext4/ext4.ko.zst") == "ext4"


def test_resolve_adds_dependencies_once_and_skips_builtins() -> None:
    deps = kernel.parse_modules_dep(MODULES_DEP)
    files, load = kernel.resolve_modules(
        ["vsock", "vmw_vsock_virtio_transport", "virtio_fs", "sd-mod"], deps, {"virtio_fs"}
    )
    assert load == ["vsock", "vmw_vsock_virtio_transport", "sd_mod"]
    assert files == [
        "kernel/net/vmw_vsock/vsock.ko.xz",
        "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko.xz",
        "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko.xz",
        "kernel/drivers/scsi/scsi_common.ko",
        "kernel/drivers/scsi/sd_mod.ko",
    ]


def test_unknown_module_is_an_error() -> None:
    with pytest.raises(BuildError, match="9p, nonexistent"):
        kernel.resolve_modules(
            ["9p", "overlay", "nonexistent"], kernel.parse_modules_dep(MODULES_DEP), set()
        )


def test_install_modules_decompresses_and_lists_them(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    mods = root / "usr/lib/modules/6.12.0-test"
    for line in MODULES_DEP.splitlines():
        rel = line.split(":")[0]
        path = mods / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = f"module {rel}".encode()
        path.write_bytes(lzma.compress(payload) if rel.endswith(".xz") else payload)
    (mods / "modules.dep").write_text(MODULES_DEP)
    (mods / "modules.builtin").write_text("kernel/fs/fuse/virtiofs.ko\n")
    (mods / "modules.order").write_text("")
    kern = kernel.Kernel("debian", "6.12.0-test", "1", root / "vmlinuz", root / "config", mods)
    tree = tmp_path / "tree"
    loaded = kernel.install_modules(
        kern, ["vmw_vsock_virtio_transport", "virtiofs"], tree, Stages(tmp_path / "log")
    )
    assert loaded == ["vmw_vsock_virtio_transport"]
    target = tree / "usr/lib/modules/6.12.0-test"
    ko = target / "kernel/net/vmw_vsock/vsock.ko"
    assert ko.read_bytes() == b"module kernel/net/vmw_vsock/vsock.ko.xz"
    assert not list(target.rglob("*.xz"))
    assert (target / "modules.builtin").exists()
    conf = (tree / "etc/modules-load.d/kata.conf").read_text().splitlines()
    assert [line for line in conf if not line.startswith("#")] == ["vmw_vsock_virtio_transport"]


def test_module_list_file_ignores_comments(tmp_path: Path) -> None:
    path = tmp_path / "list"
    path.write_text("# vsock\nvsock  # transport\n\n overlay\n")
    assert kernel.read_module_list(path) == ["vsock", "overlay"]


def test_current_build_follows_fragments_and_source(tmp_path: Path) -> None:
    fragment = tmp_path / "vsock.conf"
    fragment.write_text("CONFIG_VSOCKETS=y\n")
    out = tmp_path / "build"
    image = out / "arch/x86/boot/bzImage"
    image.parent.mkdir(parents=True)
    assert not kernel.current_build(out, [fragment])
    image.write_bytes(b"kernel")
    assert not kernel.current_build(out, [fragment])  # built, but from unknown inputs
    stamp = {"source": "6.12.1-1", "fragments": kernel.fragments_digest([fragment])}
    (out / kernel.STAMP).write_text(json.dumps(stamp))
    assert kernel.current_build(out, [fragment])
    assert kernel.current_build(out, [fragment], "6.12.1-1")
    assert not kernel.current_build(out, [fragment], "6.12.2-1")
    fragment.write_text("# vsock, explained\nCONFIG_VSOCKETS=y\n")
    assert kernel.current_build(out, [fragment])  # a comment changes nothing
    fragment.write_text("CONFIG_VSOCKETS=y\nCONFIG_VIRTIO_VSOCKETS=y\n")
    assert not kernel.current_build(out, [fragment])
    (out / kernel.STAMP).write_text("not json")
    assert not kernel.current_build(out, [fragment])
