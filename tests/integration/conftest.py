"""Integration harness: the real agent as a root process on an abstract unix socket.

One agent per test module (module scope), so modules are isolated from each other; a module
whose last test calls DestroySandbox sees that agent exit, as it would in a VM. The agent's
JSON log goes to a file whose tail is attached to the report of every failing test.

Modules may override ``agent_env`` (extra environment), ``agent_args`` (command-line
arguments), ``agent_wrapper`` (a command to start the agent under) or ``agent_address`` with
their own module-scoped fixtures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from pykata.agent.mount import MS_BIND, mount, umount_all
from pykata.host.rootfs import make_busybox_rootfs
from pykata.protocols import agent_pb2, health_pb2
from pykata.ttrpc import Client

START_TIMEOUT = 30.0
SHARED_CONTAINERS = "/run/kata-containers/shared/containers"
STOP_TIMEOUT = 15.0
LOG_TAIL_LINES = 150
AGENT_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"]

_logs_by_module: dict[str, Path] = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    log_path = _logs_by_module.get(str(item.path))
    if report.failed and log_path is not None and log_path.exists():
        lines = log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        report.sections.append(("agent log (tail)", "\n".join(lines)))
    return report


async def wait_healthy(address: str, process: subprocess.Popen[bytes], within: float) -> None:
    deadline = time.monotonic() + within
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"agent exited with {process.returncode} before serving")
        try:
            async with await Client.connect(address, timeout=2.0) as client:
                health: Any = client.stub(HEALTH_SERVICE)
                resp = await health.Check(health_pb2.CheckRequest(), timeout=2.0)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except Exception as exc:
            last = exc
        await asyncio.sleep(0.05)
    raise RuntimeError(f"agent not healthy after {within}s: {last}")


def stop_agent(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the agent cleans its sandbox up), SIGKILL if it does not go."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session", autouse=True)
def _host_cgroups_left_as_found() -> Iterator[None]:
    """An agent on this host puts containers without a cgroupsPath below /kata in the host's
    hierarchies and removes only their own cgroups; the /kata folders the tests made go too."""
    before = set(Path("/sys/fs/cgroup").glob("*/kata"))
    yield
    for folder in set(Path("/sys/fs/cgroup").glob("*/kata")) - before:
        with contextlib.suppress(OSError):
            folder.rmdir()


@pytest.fixture(scope="module")
def agent_env() -> dict[str, str]:
    return {}


@pytest.fixture(scope="module")
def agent_args() -> list[str]:
    return []


@pytest.fixture(scope="module")
def agent_wrapper() -> list[str]:
    """A command the agent is started under (e.g. unshare to make it a PID 1)."""
    return []


@pytest.fixture(scope="module")
def agent_log(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("agent") / "agent.log"
    _logs_by_module[str(request.path)] = path
    return path


@pytest.fixture(scope="module")
def work_dir() -> Iterator[Path]:
    """A folder of the module's own in /tmp. An agent in a network namespace of its own is
    reached on a socket path there: abstract sockets belong to one network namespace."""
    with tempfile.TemporaryDirectory(prefix="pykata-it-") as path:
        yield Path(path)


@pytest.fixture(scope="module")
def agent_address() -> str:
    return f"unix://@pykata-it-{secrets.token_hex(6)}"


@pytest.fixture(scope="module")
def agent_process(
    agent_address: str,
    agent_log: Path,
    agent_env: dict[str, str],
    agent_args: list[str],
    agent_wrapper: list[str],
) -> Iterator[subprocess.Popen[bytes]]:
    if os.geteuid() != 0:
        pytest.skip("the agent runs as root here (mounts, namespaces, reaping)")
    env = dict(os.environ)
    env.pop("INVOCATION_ID", None)  # never pick the host's kernel command line up
    env.update({"KATA_AGENT_SERVER_ADDR": agent_address, "KATA_AGENT_LOG_LEVEL": "debug"})
    env.update(agent_env)
    with agent_log.open("wb") as log:
        process = subprocess.Popen(
            [*agent_wrapper, sys.executable, "-m", "pykata.agent", *agent_args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
        )
    try:
        asyncio.run(wait_healthy(agent_address, process, START_TIMEOUT))
    except BaseException:
        stop_agent(process)
        raise
    yield process
    stop_agent(process)


@pytest.fixture
async def agent_client(
    agent_address: str, agent_process: subprocess.Popen[bytes]
) -> AsyncIterator[Client]:
    client = await Client.connect(agent_address, timeout=10.0)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def agent(agent_client: Client) -> Any:
    """AgentService stub on a fresh connection."""
    return agent_client.stub(AGENT_SERVICE)


@pytest.fixture
def health(agent_client: Client) -> Any:
    """grpc.Health stub on a fresh connection."""
    return agent_client.stub(HEALTH_SERVICE)


@pytest.fixture(scope="module")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_busybox_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")


@pytest.fixture(scope="module")
def shared_rootfs(busybox_rootfs: Path) -> Iterator[Callable[[str], None]]:
    """Makes busybox appear as a container's host-shared rootfs (as virtio-fs would)."""
    made: list[str] = []

    def share(cid: str) -> None:
        target = f"{SHARED_CONTAINERS}/{cid}/rootfs"
        os.makedirs(target, exist_ok=True)
        mount(str(busybox_rootfs), target, None, MS_BIND)
        made.append(target)

    yield share
    for target in made:
        umount_all(target)
        os.rmdir(target)
        os.rmdir(os.path.dirname(target))
