"""OOM events across a hot upgrade: a GetOOMEvent asked before the upgrade reports an OOM
kill after it. cgroup v1: this host's memory controller is bound to its v1 hierarchy."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from agent_pod import RPC_TIMEOUT, Pod

from pykata.host.ctl.ops import upgrade
from pykata.protocols import agent_pb2

pytestmark = pytest.mark.root

MiB = 1 << 20


@pytest.fixture(scope="module")
def cgroup_layout() -> str:
    return "v1"


async def test_an_oom_event_awaited_before_the_upgrade_is_reported_after_it(
    pod: Pod, ops: Any, wheels: dict[str, Path]
) -> None:
    # dd's 128 MiB block buffer cannot fit in 32 MiB; it runs once stdin says so.
    hog = "read x; dd if=/dev/zero of=/dev/null bs=128M count=1"
    await pod.start("oomer", ["sh", "-c", hog], memory={"limit": 32 * MiB, "swap": 32 * MiB})
    event = asyncio.ensure_future(pod.agent.GetOOMEvent(agent_pb2.GetOOMEventRequest()))
    await upgrade(ops, wheels["v1"], within=120)
    assert not event.done()
    await pod.write("oomer", b"go\n")
    assert (await asyncio.wait_for(event, RPC_TIMEOUT)).container_id == "oomer"
    await pod.wait("oomer", "oomer")
    await pod.remove("oomer")
