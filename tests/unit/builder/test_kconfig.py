"""Kernel config parsing, the agent's requirements and fragment survival checks."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from pykata.builder import kconfig, layout
from pykata.builder.main import main

CONFIG = """\
#
# Automatically generated file; DO NOT EDIT.
CONFIG_VSOCKETS=m
CONFIG_EXT4_FS=y
# CONFIG_USER_NS is not set
CONFIG_NR_CPUS=64
CONFIG_CMDLINE="console=ttyS0"
"""


def test_parse_values_and_unset() -> None:
    assert kconfig.parse(CONFIG) == {
        "CONFIG_VSOCKETS": "m",
        "CONFIG_EXT4_FS": "y",
        "CONFIG_USER_NS": "n",
        "CONFIG_NR_CPUS": "64",
        "CONFIG_CMDLINE": '"console=ttyS0"',
    }


def test_read_gzipped_config(tmp_path: Path) -> None:
    path = tmp_path / "config.gz"
    path.write_bytes(gzip.compress(CONFIG.encode()))
    assert kconfig.read(path)["CONFIG_EXT4_FS"] == "y"


def test_check_accepts_modules_and_reports_missing_with_group() -> None:
    requirements = kconfig.parse_requirements(
        "# vsock\nCONFIG_VSOCKETS=y\n# containers\nCONFIG_USER_NS=y\nCONFIG_PID_NS=y\n"
        "CONFIG_NR_CPUS=128\n"
    )
    problems = kconfig.check(kconfig.parse(CONFIG), requirements)
    assert [str(p) for p in problems] == [
        "CONFIG_USER_NS=y (have: n) [containers]",
        "CONFIG_PID_NS=y (have: absent) [containers]",
        "CONFIG_NR_CPUS=128 (have: 64) [containers]",
    ]


def test_requirements_reject_malformed_lines() -> None:
    with pytest.raises(ValueError, match="CONFIG_X=value"):
        kconfig.parse_requirements("VSOCKETS=y\n")


def test_lost_fragment_lines(tmp_path: Path) -> None:
    fragment = tmp_path / "vsock.conf"
    fragment.write_text("CONFIG_VSOCKETS=y\nCONFIG_EXT4_FS=y\n# CONFIG_USER_NS is not set\n"
                        "# CONFIG_ABSENT is not set\nCONFIG_MISSING=y\n")  # fmt: skip
    lost = kconfig.lost_fragment_lines([fragment], kconfig.parse(CONFIG))
    assert lost == [
        "vsock.conf: CONFIG_MISSING=y (got n)",
        "vsock.conf: CONFIG_VSOCKETS=y (got m)",
    ]


def test_repository_fragments_cover_every_required_option() -> None:
    """Our own kernel (all fragments) must pass check-kernel, built in, not as modules."""
    merged: dict[str, str] = {}
    for fragment in layout.fragments():
        merged.update(dict(kconfig.fragment_lines(fragment)))
    requirements = kconfig.parse_requirements(layout.REQUIRED_OPTIONS.read_text())
    assert requirements
    assert kconfig.check(merged, requirements) == []
    assert not [option for option, value in merged.items() if value == "m"]


def test_fragments_start_with_base_and_are_grouped() -> None:
    names = [p.name for p in layout.fragments()]
    assert names[0] == "base.conf"
    for group in ("virtio", "vsock", "fs", "cgroup", "namespaces", "network", "seccomp",
                  "hotplug", "x86_64"):  # fmt: skip
        assert f"{group}.conf" in names


def test_check_kernel_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.config"
    merged = "".join(
        f"{option}={value}\n"
        for fragment in layout.fragments()
        for option, value in kconfig.fragment_lines(fragment)
    )
    good.write_text(merged)
    assert main(["check-kernel", str(good)]) == 0
    assert "required options present" in capsys.readouterr().out

    bad = tmp_path / "bad.config"
    bad.write_text(merged.replace("CONFIG_VIRTIO_VSOCKETS=y", "CONFIG_VIRTIO_VSOCKETS=m")
                   .replace("CONFIG_IPC_NS=y", "# CONFIG_IPC_NS is not set"))  # fmt: skip
    assert main(["check-kernel", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "missing: CONFIG_IPC_NS=y (have: n)" in out
    assert "as modules (load them at boot): CONFIG_VIRTIO_VSOCKETS" in out

    junk = tmp_path / "junk"
    junk.write_text("hello\n")
    assert main(["check-kernel", str(junk)]) == 2
    assert main(["check-kernel", str(tmp_path / "absent")]) == 2
