"""Guest helpers on sysfs-shaped trees, and the metrics text."""

from __future__ import annotations

from pathlib import Path

import pytest

from pykata.agent import guest
from pykata.agent.errors import InvalidArgument


def sysfs_tree(root: Path, prefix: str, states: list[str]) -> None:
    for index, state in enumerate(states):
        node = root / f"{prefix}{index}"
        node.mkdir(parents=True)
        (node / "online").write_text(state + "\n")


def states(root: Path, prefix: str, count: int) -> list[str]:
    return [(root / f"{prefix}{i}" / "online").read_text().strip() for i in range(count)]


def test_online_cpus_up_to_a_total(tmp_path: Path) -> None:
    sysfs_tree(tmp_path, "cpu", ["1", "0", "0", "0"])
    (tmp_path / "cpufreq").mkdir()  # not a cpuN directory

    # The kernel keeps the "online" list itself; emulate it from the per-CPU files.
    def refresh() -> None:
        up = [str(i) for i, state in enumerate(states(tmp_path, "cpu", 4)) if state == "1"]
        (tmp_path / "online").write_text(",".join(up) + "\n")

    refresh()
    assert guest.online_cpus(1, str(tmp_path)) == 1  # already there: nothing to do
    assert states(tmp_path, "cpu", 4) == ["1", "0", "0", "0"]
    guest.online_cpus(3, str(tmp_path))
    refresh()
    assert states(tmp_path, "cpu", 4) == ["1", "1", "1", "0"]
    assert guest.online_cpu_count(str(tmp_path)) == 3


def test_cpu_list() -> None:
    assert guest.parse_cpu_list("0-3,6\n") == {0, 1, 2, 3, 6}
    assert guest.parse_cpu_list("0") == {0}
    assert guest.parse_cpu_list("\n") == set()


def test_online_memory(tmp_path: Path) -> None:
    sysfs_tree(tmp_path, "memory", ["0", "1", "0"])
    assert guest.online_memory(str(tmp_path)) == 2
    assert states(tmp_path, "memory", 3) == ["1", "1", "1"]


def test_memory_block_size(tmp_path: Path) -> None:
    path = tmp_path / "block_size_bytes"
    assert guest.memory_block_size(str(path)) == 0
    path.write_text("8000000\n")
    assert guest.memory_block_size(str(path)) == 128 * 1024 * 1024


@pytest.mark.parametrize(("sec", "usec"), [(-1, 0), (0, -1), (0, 1_000_000)])
def test_set_time_rejects_out_of_range(sec: int, usec: int) -> None:
    with pytest.raises(InvalidArgument):
        guest.set_time(sec, usec)


def test_reseed_needs_data() -> None:
    with pytest.raises(InvalidArgument):
        guest.reseed_random(b"")
