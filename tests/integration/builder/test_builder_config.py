"""kata-image configuration checks that need the network and root but no VM: mkosi parses
and validates every flavour, and our kernel fragments survive a real kconfig merge."""

from __future__ import annotations

from pathlib import Path

import pytest

from pykata.builder import apt, build, hosttools, kconfig, kernel, layout, mkosi
from pykata.builder.stages import BuildError, Stages


@pytest.fixture(scope="module")
def stages(tmp_path_factory: pytest.TempPathFactory) -> Stages:
    return Stages(tmp_path_factory.mktemp("builder") / "build.log")


@pytest.fixture(scope="module")
def tool(stages: Stages) -> mkosi.Mkosi:
    return build.setup(None, stages)


@pytest.mark.parametrize("flavour", build.FLAVOURS)
def test_mkosi_summary_validates_flavour(tool: mkosi.Mkosi, flavour: str, tmp_path: Path) -> None:
    assert tool.version >= mkosi.MINIMUM
    mirrors = apt.derive_mirrors(apt.host_entries())
    apt.write_sandbox_sources(tmp_path, mirrors)
    summary = build.mkosi_summary(tool, flavour, tmp_path)
    assert "trixie" in summary
    expected = {"initrd": "cpio", "image": "directory"}[flavour]
    assert f"Output Format: {expected}" in summary
    assert "crun" in summary and "python3-prctl" not in summary


def test_fragments_survive_kconfig_merge(stages: Stages, tmp_path: Path) -> None:
    hosttools.ensure(kernel.CONFIG_TOOLS, stages)
    cache = layout.cache_root()
    apt_ = build.prepare_apt(cache, None, stages)
    source, _ = kernel.kernel_source(apt_, cache / "kernel/source", stages)
    # merge_fragments raises, listing the lost lines, when any fragment line did not survive.
    config = kconfig.read(kernel.merge_fragments(source, tmp_path, layout.fragments(), stages))
    assert config["CONFIG_X86_64"] == "y"
    assert config.get("CONFIG_MODULES", "n") == "n"
    assert "m" not in config.values()
    requirements = kconfig.parse_requirements(layout.REQUIRED_OPTIONS.read_text())
    assert kconfig.check(config, requirements) == []


def test_image_flavour_refuses_a_kernel_without_builtin_root_drivers(tmp_path: Path) -> None:
    """Debian's cloud kernel has virtio_blk as a module and Kata boots an image without an
    initrd, so that combination could never mount its root: refuse it before building."""
    options = build.Options(flavour="image", kernel_source="debian", output=tmp_path)
    with pytest.raises(BuildError, match=r"CONFIG_VIRTIO_BLK.*--kernel-source build"):
        build.build(options, Stages(tmp_path / "build.log"))
    assert not (tmp_path / "kata-rootfs.img").exists()
