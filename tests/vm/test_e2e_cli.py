"""The README's flow with the real commands: `vm up`, `run --vm`, `exec`, `ps`, `logs`,
`destroy`, `vm down` (one TCG boot of our initrd); and `vm up --net` with a container that
pings the tap end (a second boot)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pykata.builder.build import Result
from pykata.host.rootfs import make_busybox_rootfs
from pykata.host.vm import netns
from pykata.host.vm.sharedfs import is_mount_point
from pykata.host.vm.state import process_alive

pytestmark = [
    pytest.mark.vm,
    pytest.mark.root,
]

TIMEOUT = 300
CTL = [sys.executable, "-m", "pykata.host.ctl.main"]


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    # Short: the VM's sockets live below it.
    with tempfile.TemporaryDirectory(prefix="pykata-cli-") as tmp:
        yield Path(tmp)


def test_readme_flow(guest_artifacts: Result, runtime_dir: Path) -> None:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir)}

    def ctl(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CTL, *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=TIMEOUT,
        )

    rootfs = make_busybox_rootfs(runtime_dir / "rootfs")
    files = ["--kernel", str(guest_artifacts.kernel), "--initrd", str(guest_artifacts.artifact)]
    # Agent logs to vsock port 1025 (Kata's agent.log_vport), the kernel's on the console.
    up = ctl("vm", "up", "readme", *files, "--append", "agent.log_vport=1025")
    assert up.returncode == 0, up.stderr
    shared = runtime_dir / "pykata/shared/sandboxes/readme/shared"
    try:
        assert is_mount_point(shared)
        done = ctl("run", "--vm", "readme", str(rootfs), "--", "sh", "-c", "echo hi; exit 3")
        assert (done.returncode, done.stdout) == (3, "hi\n"), done.stderr
        keep = ["run", "--vm", "readme", "--id", "keep", str(rootfs), "--", "sleep", "1000"]
        runner = subprocess.Popen([*CTL, *keep], env=env)
        try:
            deadline = time.monotonic() + TIMEOUT
            while not any(
                line.startswith("keep ") and " running " in line
                for line in ctl("ps", "--vm", "readme").stdout.splitlines()
            ):
                assert time.monotonic() < deadline
                time.sleep(0.5)
            done = ctl("exec", "--vm", "readme", "keep", "--", "sh", "-c", "hostname; exit 4")
            assert (done.returncode, done.stdout) == (4, "pykata\n"), done.stderr
            assert ctl("stop", "--vm", "readme", "keep").returncode == 0
            assert runner.wait(timeout=TIMEOUT) == 137
        finally:
            runner.kill()
            runner.wait()
        assert "Run /init as init process" in ctl("logs", "--vm", "readme").stdout
        with subprocess.Popen(
            [*CTL, "logs", "--vm", "readme", "--vsock-port", "1025"],
            stdout=subprocess.PIPE,
            env=env,
        ) as logs:
            assert logs.stdout is not None
            first = json.loads(logs.stdout.readline())  # queued since boot: the announce
            logs.send_signal(signal.SIGINT)
            assert logs.wait(timeout=TIMEOUT) == 128 + signal.SIGINT
        assert (first["name"], first["msg"]) == ("kata-agent", "announce")
        assert ctl("destroy", "--vm", "readme").returncode == 0
    finally:
        down = ctl("vm", "down", "readme")
    assert down.returncode == 0, down.stderr
    assert not is_mount_point(shared)
    assert not (runtime_dir / "pykata/vms/readme/vm.json").exists()
    assert not list((runtime_dir / "pykata/ctl").glob("vm-readme-*.json"))


def test_vm_with_a_network(guest_artifacts: Result, runtime_dir: Path) -> None:
    """`vm up --net`: a NIC in a namespace the CLI owns; `run` configures it; `vm down`
    kills the namespace's holder."""
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir)}

    def ctl(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CTL, *argv], capture_output=True, text=True, env=env, timeout=TIMEOUT
        )

    rootfs = make_busybox_rootfs(runtime_dir / "rootfs")
    files = ["--kernel", str(guest_artifacts.kernel), "--initrd", str(guest_artifacts.artifact)]
    holder = 0
    try:
        up = ctl("vm", "up", "net", *files, "--net", "10.99.0.2/24")
        assert up.returncode == 0, up.stderr
        record = json.loads((runtime_dir / "pykata/vms/net/vm.json").read_text())
        holder = record["pids"]["netns"]
        assert record["net"]["address"] == "10.99.0.2/24"
        assert netns.is_own_namespace(holder)
        (tap,) = netns.ip(holder, "addr", "show", "dev", "tap0")
        assert [a["local"] for a in tap["addr_info"] if a["family"] == "inet"] == ["10.99.0.1"]
        assert "tap0" not in netns.link_names(os.getpid())
        assert "netns=up" in ctl("vm", "status", "net").stdout
        done = ctl(
            "run", "--vm", "net", str(rootfs), "--", "ping", "-c", "1", "-W", "10", "10.99.0.1"
        )
        assert done.returncode == 0, done.stdout + done.stderr
        # A second container finds the network configured already.
        done = ctl("run", "--vm", "net", str(rootfs), "--", "ip", "route")
        assert "default via 10.99.0.1 dev eth0" in done.stdout, done.stderr
        neighbours = netns.ip(holder, "neigh", "show", "dev", "tap0")
        assert ("10.99.0.2", record["net"]["mac"]) in {
            (n["dst"], n.get("lladdr")) for n in neighbours
        }
    finally:
        down = ctl("vm", "down", "net")
    assert down.returncode == 0, down.stderr
    assert not process_alive(holder, runtime_dir / "pykata/vms/net")
