"""The mount table reader (mountinfo escapes) and option parsing."""

from __future__ import annotations

from pathlib import Path

from pykata.agent.mount import MS_NODEV, MS_NOEXEC, MS_NOSUID, mount_points, parse_options

MOUNTINFO = (
    "22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw\n"
    "80 27 0:50 / /run/kata-containers/a\\040dir\\011tab rw - tmpfs tmpfs rw\n"
    "81 80 0:51 / /run/kata-containers/back\\134slash rw - tmpfs none rw,size=4k\n"
    "82 27 0:52 / /run/kata-containers/a\\040dir\\011tab rw master:1 - overlay overlay rw\n"
)


def test_mount_points_unescape_and_keep_order(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    assert mount_points(str(info)) == [
        ("/proc", "proc"),
        ("/run/kata-containers/a dir\ttab", "tmpfs"),
        ("/run/kata-containers/back\\slash", "tmpfs"),
        ("/run/kata-containers/a dir\ttab", "overlay"),  # stacked: the last one is on top
    ]


def test_the_real_table_has_root() -> None:
    assert any(point == "/" for point, _ in mount_points())


def test_parse_options_flags_and_data() -> None:
    flags, data = parse_options(["nosuid,nodev", "noexec", "size=1m", " mode=0700 ", ""])
    assert flags == MS_NOSUID | MS_NODEV | MS_NOEXEC
    assert data == "size=1m,mode=0700"
