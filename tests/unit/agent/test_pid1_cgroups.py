"""PID 1's cgroup set-up never remounts or writes into a cgroup mount it did not make (a
host's /sys/fs/cgroup tmpfs seen from a private mount namespace is the whole machine's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pykata.agent import pid1
from pykata.agent.mount import MS_REMOUNT


@pytest.fixture
def mounts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(pid1, "mount", lambda *args: calls.append(args))
    monkeypatch.setattr(pid1, "_v1_controllers", lambda: {"memory", "devices", "pids"})
    monkeypatch.setattr(pid1, "enable_controllers", lambda root: calls.append(("enable", root)))
    return calls


@pytest.mark.parametrize("v2", [True, False])
@pytest.mark.parametrize("fstype", ["tmpfs", "cgroup2"])
def test_the_hosts_cgroup_tmpfs_is_never_remounted_or_written(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mounts: list[tuple[Any, ...]],
    v2: bool,
    fstype: str,
) -> None:
    root = tmp_path / "cgroup"
    root.mkdir()
    monkeypatch.setattr(pid1, "fstype_of", lambda path: fstype if path == str(root) else None)
    pid1.mount_cgroups(v2, str(root))
    assert mounts == []
    assert list(root.iterdir()) == []


def test_v1_on_a_fresh_sys_mounts_its_own_tmpfs_then_remounts_only_that(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mounts: list[tuple[Any, ...]]
) -> None:
    root = str(tmp_path / "cgroup")
    monkeypatch.setattr(pid1, "fstype_of", lambda path: None)
    pid1.mount_cgroups(False, root)
    assert mounts[0][:3] == ("tmpfs", root, "tmpfs")
    assert [m[1] for m in mounts[1:-1]] == [f"{root}/memory", f"{root}/devices", f"{root}/pids"]
    assert mounts[-1][1] == root and mounts[-1][3] & MS_REMOUNT


def test_v2_on_a_fresh_sys_mounts_cgroup2_and_delegates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mounts: list[tuple[Any, ...]]
) -> None:
    root = str(tmp_path / "cgroup")
    monkeypatch.setattr(pid1, "fstype_of", lambda path: None)
    pid1.mount_cgroups(True, root)
    assert mounts == [
        ("cgroup2", root, "cgroup2", pid1.CGROUP_FLAGS, "nsdelegate"),
        ("enable", root),
    ]


def test_init_keeps_the_agent_out_of_the_oom_killers_way(tmp_path: Path) -> None:
    adj = tmp_path / "oom_score_adj"
    pid1.protect_from_oom(path=str(adj))
    assert adj.read_text() == "-997"
