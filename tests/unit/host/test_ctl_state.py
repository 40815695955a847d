"""The CLI's per-target state file."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

from pykata.host.ctl.state import ContainerRecord, StateFile


def record(cid: str) -> ContainerRecord:
    return ContainerRecord(
        id=cid, rootfs="/r", args=["sh"], created=time.time(), owner_pid=1, mount="/m"
    )


def test_round_trip(tmp_path: Path) -> None:
    state_file = StateFile(tmp_path / "ctl" / "t.json")
    assert state_file.load().sandbox_id is None
    with state_file.update() as state:
        state.sandbox_id = "s1"
        state.containers["c1"] = record("c1")
    loaded = state_file.load()
    assert loaded.sandbox_id == "s1"
    assert loaded.containers["c1"].args == ["sh"]
    state_file.remove()
    assert state_file.load().containers == {}


def add_containers(path: Path, prefix: str) -> None:
    for n in range(20):
        with StateFile(path).update() as state:
            state.containers[f"{prefix}{n}"] = record(f"{prefix}{n}")


def test_concurrent_updates_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    workers = [
        multiprocessing.get_context("fork").Process(target=add_containers, args=(path, p))
        for p in "abcd"
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert len(StateFile(path).load().containers) == 80
