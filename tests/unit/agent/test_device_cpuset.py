"""OnlineCPUMem: ``wait`` honoured, running containers' cpusets widened after a CPU hot-add."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pykata.agent import cpuset, guest
from pykata.agent.cgroups.v1 import CgroupV1
from pykata.agent.cgroups.v2 import CgroupV2


def cgroup_tree(root: Path, path: str, values: dict[str, str]) -> None:
    for rel, cpus in values.items():
        (root / rel).mkdir(parents=True, exist_ok=True)
        (root / rel / "cpuset.cpus").write_text(cpus + "\n")


def test_v2_explicit_lists_are_widened_top_down(tmp_path: Path) -> None:
    cgroup_tree(tmp_path, "", {"": "", "kata": "0", "kata/pod": "", "kata/pod/c1": "0"})
    cpuset.widen(tmp_path, tmp_path / "kata/pod/c1", "0-1", "")
    assert (tmp_path / "kata/cpuset.cpus").read_text() == "0-1"
    assert (tmp_path / "kata/pod/cpuset.cpus").read_text() == "\n"  # inherits: left alone
    assert (tmp_path / "kata/pod/c1/cpuset.cpus").read_text() == "0-1"
    assert (tmp_path / "cpuset.cpus").read_text() == "\n"  # the root is the kernel's


def test_spec_cpus_win_for_the_container(tmp_path: Path) -> None:
    cgroup_tree(tmp_path, "", {"kata": "0", "kata/c1": "0"})
    cpuset.widen(tmp_path, tmp_path / "kata/c1", "0-3", "2-3")
    assert (tmp_path / "kata/cpuset.cpus").read_text() == "0-3"
    assert (tmp_path / "kata/c1/cpuset.cpus").read_text() == "2-3"


def container(cgroup: Any, cpus: str = "") -> Any:
    resources = {"cpu": {"cpus": cpus}} if cpus else {}
    return SimpleNamespace(id="c", cgroup=cgroup, spec={"linux": {"resources": resources}})


def test_widen_containers_v1_and_v2(tmp_path: Path) -> None:
    online = tmp_path / "online"
    online.write_text("0-2\n")
    v1 = tmp_path / "v1"
    cgroup_tree(v1 / "cpuset", "", {"kata": "0", "kata/a": "0"})
    v2 = tmp_path / "v2"
    cgroup_tree(v2, "", {"kata": "0", "kata/b": "0"})
    missing = CgroupV2("/gone", tmp_path / "nothing")
    cpuset.widen_containers(
        [
            container(CgroupV1("/kata/a", v1)),
            container(missing, "1"),  # logged, the others still done
            container(CgroupV2("/kata/b", v2), "1-2"),
        ],
        str(online),
    )
    assert (v1 / "cpuset/kata/a/cpuset.cpus").read_text() == "0-2"
    assert (v2 / "kata/cpuset.cpus").read_text() == "0-2"
    assert (v2 / "kata/b/cpuset.cpus").read_text() == "1-2"


async def test_wait_or_background(monkeypatch: pytest.MonkeyPatch) -> None:
    release = asyncio.Event()
    calls: list[str] = []

    async def slow(nb_cpus: int, *, cpu_only: bool, after_cpus: Any) -> None:
        await release.wait()
        after_cpus()

    monkeypatch.setattr(guest, "online_cpus_and_memory", slow)
    # wait=False answers before the CPUs are online, the widening still comes.
    await guest.online_cpu_mem(2, cpu_only=True, wait=False, after_cpus=lambda: calls.append("x"))
    assert calls == []
    release.set()
    await asyncio.sleep(0.01)
    assert calls == ["x"]
    await guest.online_cpu_mem(2, cpu_only=True, wait=True, after_cpus=lambda: calls.append("y"))
    assert calls == ["x", "y"]


async def test_after_cpus_only_when_cpus_were_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(guest, "online_memory", lambda: 0)
    calls: list[int] = []
    await guest.online_cpus_and_memory(0, cpu_only=False, after_cpus=lambda: calls.append(1))
    assert calls == []
