"""The agent's RPC surface, pinned: what it serves and what answers UNIMPLEMENTED."""

from __future__ import annotations

import pytest

from pykata.agent.config import AgentConfig
from pykata.agent.reaper import Reaper
from pykata.agent.rpc import wiring
from pykata.agent.sandbox import Sandbox
from pykata.ttrpc import Server
from pykata.ttrpc.services import ServiceSet

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
        "AddSwap",
        "AddSwapPath",
        "GetDiagnosticData",
        "MemAgentCompactSet",
        "MemAgentMemcgSet",
        "ResizeVolume",
        "SetPolicy",
    },
}


@pytest.fixture
def sandbox() -> Sandbox:
    return Sandbox(AgentConfig(), Reaper())


def test_the_agent_serves_exactly_these_rpcs(sandbox: Sandbox) -> None:
    routed = ServiceSet()
    declared: dict[str, set[str]] = {}
    for service, handlers in wiring.services(sandbox):
        routed.register(service, *handlers)
        declared[service.full_name] = {rpc.name for rpc in service.methods}
    implemented = {name: set(methods) for name, methods in routed.services.items()}
    assert implemented == IMPLEMENTED
    assert {name: declared[name] - implemented[name] for name in declared} == UNIMPLEMENTED
    for name, methods in UNIMPLEMENTED.items():
        for method in methods:
            assert routed.unrouted(name, method).endswith("is not implemented by this server")


def test_the_server_is_built_from_that_wiring(sandbox: Sandbox) -> None:
    assert isinstance(wiring.build_server(sandbox), Server)


def test_the_ops_channel_serves_every_ops_rpc(sandbox: Sandbox) -> None:
    from pykata.agent.ops.runtime import AgentRuntime

    runtime = AgentRuntime(AgentConfig(), sandbox, sandbox.reaper, wiring.build_server(sandbox))
    routed = ServiceSet()
    for service, handlers in wiring.ops_services(runtime):
        routed.register(service, *handlers)
    assert {name: set(methods) for name, methods in routed.services.items()} == {
        "pykata.ops.v1.Ops": {"Status", "SetLogLevel", "DumpState", "Upgrade", "UpgradeStatus"}
    }
    assert isinstance(wiring.build_ops_server(runtime), Server)
