"""kata-virtiofsd: the Kata shim's Rust-virtiofsd flags in the C daemon's spelling."""

from __future__ import annotations

import pytest

from pykata.host.kata_virtiofsd import UsageError, translate

# What the Kata 3.30 Go shim passes with virtio_fs_extra_args from our configuration.toml.
SHIM_ARGS = [
    "--syslog",
    "--cache=auto",
    "--shared-dir=/run/kata-containers/shared/sandboxes/abc/shared",
    "--fd=3",
    "--thread-pool-size=1",
    "--announce-submounts",
]


def test_the_shims_flags() -> None:
    assert translate(SHIM_ARGS) == [
        "-o", "cache=auto",
        "-o", "source=/run/kata-containers/shared/sandboxes/abc/shared",
        "--fd=3",
        "--thread-pool-size=1",
        "-o", "announce_submounts",
    ]  # fmt: skip


def test_cache_modes_the_c_daemon_names_differently() -> None:
    assert translate(["--shared-dir=/s", "--cache=never"])[3] == "cache=none"
    assert translate(["--shared-dir=/s", "--cache=metadata"])[3] == "cache=auto"


def test_log_level_and_switches() -> None:
    args = translate(["--shared-dir=/s", "--log-level=debug", "--xattr", "--posix-acl"])
    assert args == ["-o", "source=/s", "-o", "log_level=debug", "-o", "xattr", "-o", "posix_acl"]


@pytest.mark.parametrize(
    "args",
    [
        ["--shared-dir=/s", "--inode-file-handles=mandatory"],
        ["--shared-dir=/s", "--announce-submounts=yes"],
        ["--shared-dir"],
        ["--fd=3"],
    ],
)
def test_unknown_or_incomplete_flags_are_refused(args: list[str]) -> None:
    with pytest.raises(UsageError):
        translate(args)
