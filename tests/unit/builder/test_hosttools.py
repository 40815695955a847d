"""Which host packages are missing: commands are looked up on PATH, absolute paths as files."""

from __future__ import annotations

from pathlib import Path

from pykata.builder import hosttools


def test_missing_lists_packages_of_absent_tools_once(tmp_path: Path) -> None:
    present = tmp_path / "present.h"
    present.write_text("")
    tools = {
        "sh": "dash",
        "no-such-command-pykata": "pkg-a",
        str(tmp_path / "absent.h"): "pkg-b",
        str(present): "pkg-c",
        "another-missing-command-pykata": "pkg-a",
    }
    assert hosttools.missing(tools) == ["pkg-a", "pkg-b"]
