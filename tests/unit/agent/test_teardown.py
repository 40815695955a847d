"""Teardown always finishes: every step runs, failures are reported and a retry continues;
a cancelled CreateContainer leaves nothing; the OCI runtime probe survives a dropped client."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path
from typing import Any

import pytest

from pykata.agent.config import AgentConfig
from pykata.agent.container.bundle import Bundle
from pykata.agent.container.container import Container
from pykata.agent.errors import Internal
from pykata.agent.reaper import Reaper
from pykata.agent.sandbox import Sandbox


class FakeRuntime:
    def __init__(self) -> None:
        self.deleted = 0

    async def delete(self, cid: str) -> None:
        self.deleted += 1


class BusyOnceCgroup:
    """A v1 cgroup whose first rmdir fails with EBUSY."""

    path = "/kata/c1"

    def __init__(self) -> None:
        self.removes = 0
        self.present = True

    def exists(self) -> bool:
        return self.present

    def directories(self) -> list[Path]:
        return [Path("/sys/fs/cgroup/memory/kata/c1")] if self.present else []

    def pids(self) -> list[int]:
        return []

    async def freeze(self, frozen: bool) -> None:
        pass

    def remove(self) -> None:
        self.removes += 1
        if self.removes == 1:
            raise OSError(errno.EBUSY, "Device or resource busy")
        self.present = False


class FakeStorages:
    def __init__(self) -> None:
        self.removed: list[str] = []

    async def remove(self, mount_points: list[str]) -> None:
        self.removed += mount_points


def container(tmp_path: Path) -> tuple[Container, BusyOnceCgroup, FakeStorages]:
    bundle = Bundle("c1", base=str(tmp_path))
    Path(bundle.rootfs).mkdir(parents=True)
    storages = FakeStorages()
    spec: dict[str, Any] = {"linux": {"cgroupsPath": "/kata/c1"}, "process": {}}
    c = Container(
        "c1",
        bundle,
        spec,
        FakeRuntime(),  # type: ignore[arg-type]
        Reaper(),
        ["/run/kata-containers/sandbox/storage/s1"],
        storages,  # type: ignore[arg-type]
        0,
    )
    cgroup = BusyOnceCgroup()
    c.cgroup = cgroup  # type: ignore[assignment]
    c.owns_cgroup = True
    return c, cgroup, storages


async def test_remove_container_retry_after_ebusy_finishes_the_teardown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pykata.agent.container.bundle.umount_all", lambda path: None)
    c, cgroup, storages = container(tmp_path)
    sandbox = Sandbox(AgentConfig(), Reaper())
    sandbox.containers["c1"] = c
    with pytest.raises(Internal, match=r"cgroup: .*busy"):
        await sandbox.remove_container("c1", 0)
    # Still known; the later steps ran anyway; the cgroup is still there.
    assert sandbox.containers["c1"] is c
    assert not (tmp_path / "c1").exists()
    assert storages.removed == ["/run/kata-containers/sandbox/storage/s1"]
    assert cgroup.present
    await sandbox.remove_container("c1", 0)
    assert "c1" not in sandbox.containers
    assert not cgroup.present
    # The retry continued: nothing released twice.
    assert storages.removed == ["/run/kata-containers/sandbox/storage/s1"]
    assert getattr(c.runtime, "deleted") == 1  # noqa: B009


async def test_a_foreign_cgroup_is_never_signalled_or_removed(tmp_path: Path) -> None:
    c, cgroup, _ = container(tmp_path)
    c.owns_cgroup = False
    cgroup.removes = 1  # rmdir would succeed
    await c.destroy()
    assert cgroup.removes == 1 and cgroup.present


async def test_a_dropped_client_during_create_container_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sandbox = Sandbox(AgentConfig(), Reaper())
    made = asyncio.Event()
    destroyed: list[str] = []

    class Made:
        init = None

        async def destroy(self) -> None:
            destroyed.append("c1")

    async def slow_create(*args: Any) -> Any:
        await asyncio.sleep(0.2)
        made.set()
        return Made()

    monkeypatch.setattr(sandbox, "_create_container", slow_create)
    monkeypatch.setattr("pykata.agent.sandbox.guest_lsms", lambda: frozenset())
    request = asyncio.ensure_future(
        sandbox.create_container(
            container_id="c1",
            exec_id="",
            spec={"root": {"path": "/r"}},
            storages=[],
            sandbox_pidns=False,
        )
    )
    await asyncio.sleep(0.05)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    assert made.is_set()  # the creation finished ...
    assert destroyed == ["c1"]  # ... and was undone
    assert sandbox.containers == {} and sandbox._creating == {}


async def test_a_dropped_client_does_not_break_the_runtime_probe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []

    async def detect(reaper: Reaper) -> str:
        calls.append(1)
        await asyncio.sleep(0.1)
        return "crun"

    monkeypatch.setattr("pykata.agent.sandbox.detect", detect)
    sandbox = Sandbox(AgentConfig(), Reaper())
    sandbox.start_runtime_probe()  # as the daemon does right after listening
    first = asyncio.ensure_future(sandbox._oci_runtime())
    await asyncio.sleep(0.01)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    runtime: object = await sandbox._oci_runtime()
    assert runtime == "crun"
    assert calls == [1]


async def test_the_agent_exiting_during_the_probe_waits_for_its_cleanup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    finished = []

    async def detect(reaper: Reaper) -> str:
        await asyncio.sleep(0.1)
        finished.append(1)  # the probe container deleted
        return "crun"

    monkeypatch.setattr("pykata.agent.sandbox.detect", detect)
    sandbox = Sandbox(AgentConfig(), Reaper())
    sandbox.start_runtime_probe()
    await sandbox.settle_runtime_probe()
    assert finished == [1]
