"""grpc.Health and the agent's start-up behaviour."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pykata.agent.version import API_VERSION, VERSION
from pykata.protocols import agent_pb2, health_pb2
from pykata.ttrpc.errors import Unimplemented


async def test_check_serving(health: Any) -> None:
    resp = await health.Check(health_pb2.CheckRequest())
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_version(health: Any) -> None:
    resp = await health.Version(health_pb2.CheckRequest())
    assert resp.agent_version == VERSION
    assert resp.grpc_version == API_VERSION


async def test_unimplemented_rpc_answers_unimplemented(agent: Any) -> None:
    with pytest.raises(Unimplemented, match="ResizeVolume"):
        await agent.ResizeVolume(agent_pb2.ResizeVolumeRequest())


def test_announce_is_the_first_json_log_line(
    agent_process: subprocess.Popen[bytes], agent_log: Path
) -> None:
    first = agent_log.read_text().splitlines()[0]
    assert '"msg": "announce"' in first
    record = json.loads(first)
    assert record["name"] == "kata-agent"
    assert record["source"] == "agent"
    assert record["pid"] == agent_process.pid
    assert record["agent-version"] == VERSION
    assert record["config"]["server_addr"].startswith("unix://@pykata-it-")
    assert record["config"]["log_level"] == "debug"


def test_every_log_line_is_json(agent_log: Path) -> None:
    for line in agent_log.read_text().splitlines():
        record = json.loads(line)
        assert {"ts", "level", "msg", "pid", "name", "source", "subsystem"} <= set(record)
