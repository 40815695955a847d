"""A hot upgrade of our agent under the unmodified Kata Go shim (see conftest.py for the
stack): `ctr run` streams a counter container's output through the shim while the agent is
replaced over its ops channel; the shim's connection survives (it sees no disconnect), no
line is lost or repeated, and the shim's pending WaitProcess gets the exit code."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_pod import COUNTER
from stack import RUNTIME, Kata, ShimMissing, start_stack

from pykata.builder import build
from pykata.host.agent_wheel import build_agent_wheel

OPS_PORT = 1027
TIMEOUT = 300
POD = "pod-upgrade"


@pytest.fixture(scope="module")
def kata_ops(guest: build.Result, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kata]:
    work = tmp_path_factory.mktemp("kata-ops")
    try:
        stack = start_stack(guest, work, debug=True, kernel_params=f"agent.ops_vport={OPS_PORT}")
    except ShimMissing as exc:
        pytest.fail(str(exc))
    try:
        yield stack
    finally:
        stack.containerd.stop()


def wait_for_lines(path: Path, count: int) -> int:
    deadline = time.monotonic() + TIMEOUT
    while (seen := len(path.read_text().splitlines())) < count:
        assert time.monotonic() < deadline, f"{seen} lines, waiting for {count}"
        time.sleep(0.2)
    return seen


def test_upgrade_under_the_kata_shim(kata_ops: Kata, tmp_path: Path) -> None:
    containerd = kata_ops.containerd
    wheel = build_agent_wheel(tmp_path / "wheels", "0.1.0+kata1")
    output = tmp_path / "counter.out"
    assert containerd.process is not None
    ctr = [*containerd.ctr_command(), "run", "--rm", "--runtime", RUNTIME, kata_ops.image, POD]
    with output.open("w") as out:
        runner = subprocess.Popen(
            ["nsenter", "-t", str(containerd.process.pid), "-m", "--", *ctr, "sh", "-c", COUNTER],
            stdout=out,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_for_lines(output, 50)
        (sandbox,) = containerd.in_namespace("ls", "/run/vc/vm").stdout.split()
        ops = f"hvsock:///run/vc/vm/{sandbox}/clh.sock:{OPS_PORT}"

        def ops_ctl(*args: str) -> subprocess.CompletedProcess[str]:
            command = [sys.executable, "-m", "pykata.host.ctl.main", "ops", *args]
            return containerd.in_namespace(*command, "--server-address", ops, timeout=TIMEOUT)

        before = json.loads(ops_ctl("status").stdout)
        done = ops_ctl("upgrade", str(wheel), "--ready-timeout", "240")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "-> 0.1.0+kata1" in done.stdout
        after = json.loads(ops_ctl("status").stdout)
        assert after["generation"] == 1 and after["pid"] == 1
        # The shim's connection is the one the agent had before: still one, same pids.
        assert after["agent_connections"] == before["agent_connections"]
        assert [c["processes"] for c in after["containers"]] == [
            c["processes"] for c in before["containers"]
        ]
        seen = len(output.read_text().splitlines())
        wait_for_lines(output, seen + 50)
        killed = containerd.ctr("task", "kill", "-s", "SIGKILL", POD)
        assert killed.returncode == 0, killed.stderr
        assert runner.wait(timeout=TIMEOUT) == 137
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
            containerd.ctr("task", "delete", "-f", POD, timeout=60)
            containerd.ctr("container", "delete", POD, timeout=60)
    numbers = [int(n) for n in output.read_text().splitlines()]
    assert numbers == list(range(1, len(numbers) + 1))
