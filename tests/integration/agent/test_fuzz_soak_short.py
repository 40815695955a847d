"""Short runs of `just fuzz` and `just soak` (tests/bench/bench_fuzz.py, bench_soak.py):
a correctness check, not a timed one. Each starts its own agent (unshared mount and network
namespaces, a tmpfs on /run/kata-containers), so the module's shared agent is not used.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the agent runs as root here")


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"short_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


async def test_fuzz_2000_frames_no_crash_no_hang(tmp_path: Path) -> None:
    bench_fuzz = load("bench_fuzz")
    result = await bench_fuzz.run(2000, 7, 500, False, tmp_path)
    agent = result["agent"]
    assert agent["frames"] == 2000
    assert agent["crashes"] == 0, agent["crash_batches"]
    assert agent["hangs"] == 0, agent["hang_batches"]
    # Every request other than a long poll was answered, on a connection kept open.
    assert agent["unanswered_by_method"] == {}
    assert agent["connections_closed_by_server"] == 0
    assert "UNKNOWN" not in agent["responses_by_code"]


async def test_soak_20_lifecycles_50_execs_10_dropped_clients_no_leak(tmp_path: Path) -> None:
    bench_soak = load("bench_soak")
    result = await bench_soak.run(20, 50, False, tmp_path, dropped=10)
    agent = result["agent"]
    assert not agent["agent_exited"]
    assert agent["cgroups_while_running"] > 0  # the cgroup count looks where the agent puts them
    leaks = agent["leaks"]
    assert leaks["mounts"] == 0, leaks["mounts_new"]
    assert leaks["fds"] == 0
    assert leaks["zombies"] == 0
    assert leaks["threads"] == 0
    assert leaks["cgroups"] == 0, leaks["cgroups_left"]
