"""The agent's RPC surface, pinned: what it serves and what answers UNIMPLEMENTED."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pykata.agent.config import AgentConfig
from pykata.agent.reaper import Reaper
from pykata.agent.rpc import agent_service, wiring
from pykata.ttrpc import Server

IMPLEMENTED = {
    "grpc.Health": {"Check", "Version"},
    "grpc.AgentService": {
        # sandbox and guest
        "CreateSandbox",
        "DestroySandbox",
        "GetGuestDetails",
        "SetGuestDateTime",
        "OnlineCPUMem",
        "MemHotplugByProbe",
        "ReseedRandomDev",
        "AddSwap",
        "AddSwapPath",
        "GetMetrics",
        # files and storages
        "CopyFile",
        "UpdateEphemeralMounts",
        "GetVolumeStats",
        "RemoveStaleVirtiofsShareMounts",
        # containers
        "CreateContainer",
        "StartContainer",
        "RemoveContainer",
        "PauseContainer",
        "ResumeContainer",
        "UpdateContainer",
        "StatsContainer",
        "GetOOMEvent",
        "GetDiagnosticData",
        # processes
        "ExecProcess",
        "SignalProcess",
        "WaitProcess",
        "ReadStdout",
        "ReadStderr",
        "WriteStdin",
        "CloseStdin",
        "TtyWinResize",
        # network
        "UpdateInterface",
        "UpdateRoutes",
        "ListInterfaces",
        "ListRoutes",
        "AddARPNeighbors",
        "GetIPTables",
        "SetIPTables",
    },
}

UNIMPLEMENTED = {
    "grpc.Health": set(),
    "grpc.AgentService": {
        "MemAgentCompactSet",
        "MemAgentMemcgSet",
        "ResizeVolume",
        "SetPolicy",
    },
}


@pytest.fixture
def server() -> Server:
    server = wiring.health_server()
    agent_service.serve(server, AgentConfig(), Reaper())
    server.routing_complete()
    return server


def test_the_agent_serves_exactly_these_rpcs(server: Server) -> None:
    routed = server.services
    declared = {
        service.full_name: {rpc.name for rpc in service.methods}
        for service in (wiring.HEALTH, agent_service.SERVICE)
    }
    implemented = {name: set(methods) for name, methods in routed.services.items()}
    assert implemented == IMPLEMENTED
    assert {name: declared[name] - implemented[name] for name in declared} == UNIMPLEMENTED
    for name, methods in UNIMPLEMENTED.items():
        for method in methods:
            assert routed.unrouted(name, method).endswith("is not implemented by this server")


def test_health_is_served_before_the_rest_of_the_agent_is_imported() -> None:
    code = (
        "import sys\n"
        "from pykata.agent.main import serving_module\n"
        "serving_module()\n"
        "from pykata.agent.rpc import wiring\n"
        "server = wiring.health_server()\n"
        "print(sorted(server.services.services))\n"
        "print(sorted(m for m in sys.modules if m.startswith(('pykata.agent.sandbox',\n"
        "    'pykata.agent.container', 'pykata.agent.storage', 'pykata.agent.rpc.containers'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == ["['grpc.Health']", "[]"]


def test_the_ops_channel_serves_every_ops_rpc() -> None:
    from pykata.agent.ops.runtime import AgentRuntime

    agent = wiring.health_server()
    sandbox = agent_service.serve(agent, AgentConfig(), Reaper())
    ops = wiring.build_ops_server(AgentRuntime(AgentConfig(), sandbox, sandbox.reaper, agent))
    assert {name: set(methods) for name, methods in ops.services.services.items()} == {
        "pykata.ops.v1.Ops": {"Status", "SetLogLevel", "DumpState", "Upgrade", "UpgradeStatus"}
    }
