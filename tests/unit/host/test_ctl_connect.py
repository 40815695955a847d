"""`kata-agent-ctl connect` against a real ttRPC server serving test handlers."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator

import pytest
from google.protobuf import empty_pb2

from pykata.host.ctl.errors import ExitCode
from pykata.host.ctl.main import main
from pykata.protocols import agent_pb2, health_pb2
from pykata.ttrpc import Server
from pykata.ttrpc.errors import NotFound


class Health:
    async def Check(self, request: health_pb2.CheckRequest) -> health_pb2.HealthCheckResponse:
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    async def Version(self, request: health_pb2.CheckRequest) -> health_pb2.VersionCheckResponse:
        return health_pb2.VersionCheckResponse(agent_version="test", grpc_version="9")


class Agent:
    """Knows one container, "c1": its stats carry the pid limit as a recognisable value."""

    async def StatsContainer(
        self, request: agent_pb2.StatsContainerRequest
    ) -> agent_pb2.StatsContainerResponse:
        if request.container_id != "c1":
            raise NotFound(f"container {request.container_id} not found")
        response = agent_pb2.StatsContainerResponse()
        response.cgroup_stats.pids_stats.limit = 42
        return response

    async def WaitProcess(
        self, request: agent_pb2.WaitProcessRequest
    ) -> agent_pb2.WaitProcessResponse:
        await asyncio.sleep(1.0)  # longer than the --timeout the test gives
        return agent_pb2.WaitProcessResponse(status=9)

    async def ReseedRandomDev(self, request: agent_pb2.ReseedRandomDevRequest) -> empty_pb2.Empty:
        await asyncio.sleep(1.0)
        return empty_pb2.Empty()


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    """A server on its own event loop thread, since main() runs its own loop."""
    loop = asyncio.new_event_loop()
    server = Server()
    server.register(health_pb2.DESCRIPTOR.services_by_name["Health"], Health())
    server.register(agent_pb2.DESCRIPTOR.services_by_name["AgentService"], Agent())
    with tempfile.TemporaryDirectory(prefix="ctl-") as tmp:
        addr = f"unix://{tmp}/agent.sock"
        loop.run_until_complete(server.listen(addr))
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        yield addr
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def test_check_and_version(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["connect", "--server-address", address, "-c", "Check", "-c", "Version"])
    assert code == ExitCode.OK
    decoder = json.JSONDecoder()
    out = capsys.readouterr().out
    check, end = decoder.raw_decode(out)
    version, _ = decoder.raw_decode(out[end:].lstrip())
    assert check == {"status": "SERVING"}
    assert version == {"grpc_version": "9", "agent_version": "test"}


def test_json_body_reaches_the_server(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "connect",
            "--server-address",
            address,
            "-c",
            'StatsContainer json://{"container_id":"c1"}',
        ]
    )
    assert code == ExitCode.OK
    reply = json.loads(capsys.readouterr().out)
    assert reply["cgroup_stats"]["pids_stats"]["limit"] == "42"  # uint64 is a JSON string


def test_rpc_error_exits_1_with_code_name(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "connect",
            "--server-address",
            address,
            "-c",
            'StatsContainer json://{"container_id":"nope"}',
            "-c",
            "Check",
        ]
    )
    assert code == ExitCode.RPC_ERROR
    captured = capsys.readouterr()
    assert "StatsContainer: NOT_FOUND: container nope not found" in captured.err
    assert captured.out == ""  # stops at the first failure: Check was not called


def test_unimplemented_method_exits_1(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["connect", "--server-address", address, "-c", "GetMetrics"]) == 1
    assert "GetMetrics: UNIMPLEMENTED" in capsys.readouterr().err


def test_waits_get_no_deadline(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["connect", "--server-address", address, "--timeout", "0.3"]
    assert main([*argv, "-c", "WaitProcess"]) == ExitCode.OK
    assert json.loads(capsys.readouterr().out) == {"status": 9}
    # Ordinary calls do get it.
    assert main([*argv, "-c", "ReseedRandomDev"]) == ExitCode.RPC_ERROR
    assert "ReseedRandomDev: DEADLINE_EXCEEDED" in capsys.readouterr().err


def test_no_agent_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["connect", "--server-address", f"unix://{tmp}/none", "--timeout", "0.3"]
        assert main([*argv, "-c", "Check"]) == ExitCode.CONNECTION
    assert "cannot connect to" in capsys.readouterr().err


def ctl_command() -> list[str]:
    return [sys.executable, "-m", "pykata.host.ctl.main"]


def test_interactive_shell_runs_lines_and_completes_names(address: str) -> None:
    # A real terminal, so readline is active: "Chec<TAB>" must complete to Check.
    primary, secondary = pty.openpty()
    with subprocess.Popen(
        [*ctl_command(), "connect", "--server-address", address, "--interactive"],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
    ) as proc:
        os.close(secondary)
        os.write(primary, b"Chec\t\nBogus\nsleep x\nlist\nquit\n")
        output = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        assert proc.wait(timeout=30) == ExitCode.OK
    os.close(primary)
    text = output.decode()
    assert '"status": "SERVING"' in text
    assert "unknown method 'Bogus'" in text
    assert "sleep: give a number of seconds" in text
    assert "StatsContainer" in text  # from `list`
