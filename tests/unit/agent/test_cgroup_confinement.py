"""Container cgroups are confined below /kata: a cgroupsPath never names the agent's own
cgroup, one above it, a foreign one elsewhere, or nests with another container's."""

from __future__ import annotations

from pathlib import Path

import pytest

from pykata.agent.cgroups import check_container_path, own_cgroups
from pykata.agent.container.spec import cgroups_path
from pykata.agent.errors import InvalidArgument


@pytest.mark.parametrize(
    "requested", ["/system.slice/kata-agent.service", "/init.scope", "/user.slice", "/"]
)
def test_cgroups_path_naming_the_agents_own_cgroup_lands_below_kata(requested: str) -> None:
    try:
        path = cgroups_path(requested, "c1")
    except InvalidArgument:
        return
    assert path.startswith("/kata/")
    assert check_container_path(path, [], {requested}) is None


@pytest.mark.parametrize("requested", ["..", "/kata/../x", "a/../../b", "/../../sys"])
def test_cgroups_path_with_dot_dot_is_refused(requested: str) -> None:
    with pytest.raises(InvalidArgument, match="cgroupsPath"):
        cgroups_path(requested, "c1")


def test_cgroup_path_at_or_above_the_agent_is_refused() -> None:
    agent = {"/kata/agent"}
    assert check_container_path("/kata/agent", [], agent)
    assert check_container_path("/kata", [], agent)
    assert check_container_path("/kata/x", [], agent) is None


def test_cgroup_path_outside_kata_is_refused() -> None:
    assert check_container_path("/system.slice", [], set())


def test_another_containers_cgroup_is_refused() -> None:
    used = ["/kata/pod/a"]
    assert check_container_path("/kata/pod/a", used, set())
    assert check_container_path("/kata/pod/a/b", used, set())
    assert check_container_path("/kata/pod", used, set())
    assert check_container_path("/kata/pod/b", used, set()) is None


def test_own_cgroups_reads_every_hierarchy(tmp_path: Path) -> None:
    f = tmp_path / "cgroup"
    f.write_text("4:memory:/a/b\n1:cpu:/\n0::/c\n")
    assert own_cgroups(str(f)) == {"/a/b", "/", "/c"}
