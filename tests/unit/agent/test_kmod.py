"""The agent's own module loader: modules.dep order, built-ins, errors (nothing is loaded)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pykata.agent import kmod


@pytest.fixture
def index(tmp_path: Path) -> kmod.ModuleIndex:
    (tmp_path / "modules.dep").write_text(
        "kernel/net/vmw_vsock/vsock.ko:\n"
        "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: "
        "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/net/vmw_vsock/vsock.ko\n"
        "kernel/drivers/nvdimm/nd_pmem.ko.xz: kernel/drivers/nvdimm/nd_btt.ko.xz "
        "kernel/drivers/nvdimm/libnvdimm.ko.xz\n"
        "kernel/net/netfilter/nft-compat.ko: kernel/net/netfilter/nf_tables.ko\n"
    )
    (tmp_path / "modules.builtin").write_text("kernel/fs/fuse/virtiofs.ko\nkernel/net/unix.ko\n")
    return kmod.ModuleIndex(tmp_path)


def test_dependencies_load_first_deepest_first(index: kmod.ModuleIndex) -> None:
    assert index.load_order("vmw_vsock_virtio_transport") == [
        "kernel/net/vmw_vsock/vsock.ko",
        "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko",
        "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko",
    ]
    assert index.load_order("vsock") == ["kernel/net/vmw_vsock/vsock.ko"]


def test_compressed_modules_and_dashes_match_their_names(index: kmod.ModuleIndex) -> None:
    assert index.load_order("nd_pmem")[-1] == "kernel/drivers/nvdimm/nd_pmem.ko.xz"
    assert index.load_order("nft_compat")[-1] == "kernel/net/netfilter/nft-compat.ko"
    assert index.load_order("nft-compat") == index.load_order("nft_compat")


def test_built_in_modules_need_nothing(index: kmod.ModuleIndex) -> None:
    assert index.load_order("virtiofs") == []


def test_unknown_module_is_an_error(index: kmod.ModuleIndex) -> None:
    with pytest.raises(kmod.ModuleError, match="module nosuch not found"):
        index.load_order("nosuch")


def test_a_missing_module_file_is_reported_by_name(index: kmod.ModuleIndex) -> None:
    with pytest.raises(kmod.ModuleError, match="cannot load vsock"):
        kmod.load(index, "vsock")


def test_load_all_tries_every_module_and_returns_the_errors(tmp_path: Path) -> None:
    (tmp_path / "modules.dep").write_text("kernel/a.ko:\n")
    errors = kmod.load_all(["nosuch", "a"], tmp_path)
    assert len(errors) == 2
    assert "nosuch not found" in errors[0] and "cannot load a" in errors[1]


def test_load_all_without_an_index_says_so(tmp_path: Path) -> None:
    assert kmod.load_all(["vsock"], tmp_path / "none") == [
        f"no module index in {tmp_path / 'none'}: No such file or directory"
    ]
