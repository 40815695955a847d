"""Sandbox container orchestration: what it refuses before touching the system."""

from __future__ import annotations

from typing import Any

import pytest

from pykata.agent.config import AgentConfig
from pykata.agent.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from pykata.agent.reaper import Reaper
from pykata.agent.sandbox import Sandbox
from pykata.agent.storage.manager import StorageSpec

SPEC: dict[str, Any] = {"root": {"path": "/run/kata-containers/shared/containers/c1/rootfs"}}


@pytest.fixture
def sandbox() -> Sandbox:
    return Sandbox(AgentConfig(), Reaper())  # the reaper is never started: nothing runs


async def _create(sandbox: Sandbox, **overrides: Any) -> None:
    args: dict[str, Any] = {
        "container_id": "c1",
        "exec_id": "",
        "spec": SPEC,
        "storages": [],
        "sandbox_pidns": False,
    }
    await sandbox.create_container(**{**args, **overrides})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"container_id": "../c1"}, "invalid container id"),
        ({"exec_id": "-e"}, "invalid exec id"),
        ({"spec": None}, "CreateContainer needs an OCI spec"),
        ({"spec": {"root": {}}}, "the OCI spec has no root path"),
    ],
)
async def test_create_container_refuses_bad_requests(
    sandbox: Sandbox, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        await _create(sandbox, **overrides)


async def test_create_container_refuses_an_existing_id(sandbox: Sandbox) -> None:
    sandbox.containers["c1"] = object()  # type: ignore[assignment]
    with pytest.raises(AlreadyExists, match="container c1 already exists"):
        await _create(sandbox)


async def test_unknown_containers_are_not_found(sandbox: Sandbox) -> None:
    with pytest.raises(NotFound, match="container nope not found"):
        await sandbox.start_container("nope")
    with pytest.raises(NotFound, match="container nope not found"):
        await sandbox.remove_container("nope", 0)


async def test_only_ephemeral_storages_are_updated(sandbox: Sandbox) -> None:
    specs = [StorageSpec("local", mount_point="/run/kata-containers/sandbox/local/x")]
    with pytest.raises(InvalidArgument, match="only ephemeral storages can be updated"):
        await sandbox.update_ephemeral_mounts(specs)
    outside = [StorageSpec("ephemeral", mount_point="/tmp/x")]
    with pytest.raises(InvalidArgument, match="is not under /run/kata-containers"):
        await sandbox.update_ephemeral_mounts(outside)


def test_the_first_container_makes_the_sandbox_pid_namespace(sandbox: Sandbox) -> None:
    assert sandbox._sandbox_pidns() == ""  # none yet: the first container gets a new one
    sandbox.containers["pause"] = object()  # type: ignore[assignment]
    with pytest.raises(FailedPrecondition, match="no shared pid namespace"):
        sandbox._sandbox_pidns()
    sandbox._pidns = ("pause", "/proc/42/ns/pid")
    assert sandbox._sandbox_pidns() == "/proc/42/ns/pid"
    del sandbox.containers["pause"]
    with pytest.raises(FailedPrecondition, match="its container pause was removed"):
        sandbox._sandbox_pidns()


async def test_a_relative_guest_hook_path_is_refused(sandbox: Sandbox) -> None:
    with pytest.raises(InvalidArgument, match="guest_hook_path 'hooks' must be absolute"):
        await sandbox.create(
            sandbox_id="",
            hostname="h",
            dns=[],
            storages=[],
            sandbox_pidns=False,
            kernel_modules=[],
            guest_hook_path="hooks",
        )
    assert not sandbox.running
