"""The ops channel and a hot upgrade in a TCG guest, with the real commands: `vm up
--ops-port`, `ops status --vm`, and `ops upgrade --vm NAME WHEEL` while a `run --vm`
container prints a numbered line every 10 ms through a connection made before the upgrade
(no line lost or repeated, the container's exit code arrives through the new agent)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_pod import COUNTER

from pykata.builder.build import Result
from pykata.host.agent_wheel import build_agent_wheel
from pykata.host.rootfs import make_busybox_rootfs

pytestmark = [pytest.mark.vm, pytest.mark.root]

TIMEOUT = 300
CTL = [sys.executable, "-m", "pykata.host.ctl.main"]
OPS_PORT = 1027


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="pykata-ops-") as tmp:
        yield Path(tmp)


def wait_for_lines(path: Path, count: int) -> list[str]:
    deadline = time.monotonic() + TIMEOUT
    while True:
        lines = path.read_text().splitlines()
        if len(lines) >= count:
            return lines
        assert time.monotonic() < deadline, f"{len(lines)} lines, waiting for {count}"
        time.sleep(0.2)


def test_ops_status_and_upgrade_mid_container(guest_artifacts: Result, runtime_dir: Path) -> None:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir)}

    def ctl(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CTL, *argv], capture_output=True, text=True, env=env, timeout=TIMEOUT
        )

    rootfs = make_busybox_rootfs(runtime_dir / "rootfs")
    wheel = build_agent_wheel(runtime_dir / "wheels", "0.1.0+vm1")
    files = ["--kernel", str(guest_artifacts.kernel), "--initrd", str(guest_artifacts.artifact)]
    up = ctl("vm", "up", "ops", *files, "--ops-port", str(OPS_PORT))
    assert up.returncode == 0, up.stderr
    output = runtime_dir / "counter.out"
    try:
        status = ctl("ops", "status", "--vm", "ops")
        assert status.returncode == 0, status.stderr
        before = json.loads(status.stdout)
        assert (before["pid"], before["agent_version"]) == (1, "0.1.0")
        with output.open("w") as out:
            command = ["sh", "-c", COUNTER]
            runner = subprocess.Popen(
                [*CTL, "run", "--vm", "ops", "--id", "counter", str(rootfs), "--", *command],
                stdout=out,
                env=env,
            )
        try:
            wait_for_lines(output, 50)
            done = ctl("ops", "upgrade", "--vm", "ops", str(wheel), "--ready-timeout", "240")
            assert done.returncode == 0, done.stdout + done.stderr
            assert "upgraded 0.1.0 -> 0.1.0+vm1" in done.stdout
            seen = len(output.read_text().splitlines())
            wait_for_lines(output, seen + 50)
            after = json.loads(ctl("ops", "status", "--vm", "ops").stdout)
            assert (after["agent_version"], after["generation"], after["pid"]) == (
                "0.1.0+vm1",
                1,
                1,
            )
            stop = ctl("stop", "--vm", "ops", "counter")
            assert stop.returncode == 0, stop.stderr
            assert runner.wait(timeout=TIMEOUT) in (137, 143)
        finally:
            runner.kill()
            runner.wait()
        numbers = [int(n) for n in output.read_text().splitlines()]
        assert numbers == list(range(1, len(numbers) + 1))
        assert ctl("destroy", "--vm", "ops").returncode == 0
    finally:
        down = ctl("vm", "down", "ops")
    assert down.returncode == 0, down.stderr
