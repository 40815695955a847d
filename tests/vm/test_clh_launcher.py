"""kata-clh as the Kata shim uses it: a real process driven over its API socket with the
JSON the shim sends, booting our initrd in QEMU; the agent answers Health.Check over the
hybrid vsock socket named in the VmConfig; vmm.shutdown (or SIGKILL) leaves no process."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pykata.builder import build
from pykata.host.vm import virtiofsd
from pykata.host.vm.process import die_with_parent
from pykata.protocols import health_pb2
from pykata.ttrpc import Client

pytestmark = [pytest.mark.vm, pytest.mark.root]

KATA_CLH = Path(sys.executable).parent / "kata-clh"
MIB = 1024 * 1024


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self.path))


def call(
    api: Path, method: str, name: str, body: Any = None, timeout: float = 1.0
) -> tuple[int, Any]:
    """One API call with the shim's deadline; (status, JSON body or None)."""
    conn = UnixHTTPConnection(api, timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        conn.request(method, f"/api/v1/{name}", payload, headers)
        response = conn.getresponse()
        data = response.read()
        if data:
            assert response.getheader("Content-Type") == "application/json"
        return response.status, json.loads(data) if data else None
    finally:
        conn.close()


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    found.add(int(child))
                    todo.append(int(child))
    return found


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


class Sandbox:
    """What the shim prepares: a folder, virtiofsd on a shared dir, the launcher."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.api = root / "clh-api.sock"
        self.hybrid = root / "clh.sock"
        self.shared = root / "shared"
        self.shared.mkdir()
        self.virtiofsd_socket = root / "virtiofsd.sock"
        self.procs: list[subprocess.Popen[bytes]] = []

    def start_virtiofsd(self) -> None:
        log = open(self.root / "virtiofsd.log", "wb")  # noqa: SIM115 (closed with the test dir)
        self.procs.append(
            subprocess.Popen(
                virtiofsd.command(self.virtiofsd_socket, self.shared),
                stdout=log,
                stderr=log,
                preexec_fn=die_with_parent,
            )
        )
        deadline = time.monotonic() + 30
        while not self.virtiofsd_socket.exists():
            assert time.monotonic() < deadline, "virtiofsd did not start"
            time.sleep(0.02)

    def start_launcher(self) -> subprocess.Popen[bytes]:
        out = open(self.root / "launcher.stdout", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [str(KATA_CLH), "--api-socket", str(self.api), "-v"],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        self.procs.append(proc)
        deadline = time.monotonic() + 10  # the shim's wait for the VMM
        while True:
            with contextlib.suppress(OSError):
                status, body = call(self.api, "GET", "vmm.ping")
                assert status == 200 and body["version"]
                return proc
            assert proc.poll() is None, "kata-clh exited"
            assert time.monotonic() < deadline, "kata-clh API not up in 10 s"
            time.sleep(0.01)

    def vm_config(self, guest: build.Result) -> dict[str, Any]:
        """A VmConfig as Kata 3.30's clh driver builds it (debug on, initrd guest)."""
        return {
            "payload": {
                "kernel": str(guest.kernel),
                "initramfs": str(guest.artifact),
                "cmdline": "panic=1 no_timer_check noreplace-smp console=ttyS0,115200n8 "
                "systemd.log_target=console agent.log=debug",
            },
            "cpus": {
                "boot_vcpus": 1,
                "max_vcpus": 2,
                "topology": {
                    "threads_per_core": 1,
                    "cores_per_die": 2,
                    "dies_per_package": 1,
                    "packages": 1,
                },
            },
            "memory": {
                "size": 1024 * MIB,
                "hotplug_size": 1024 * MIB,
                "shared": True,
                "hugepages": False,
            },
            "fs": [
                {
                    "tag": "kataShared",
                    "socket": str(self.virtiofsd_socket),
                    "num_queues": 1,
                    "queue_size": 1024,
                }
            ],
            "vsock": {"cid": 3, "socket": str(self.hybrid)},
            "rng": {"src": "/dev/urandom"},
            "serial": {"mode": "Tty"},
            "console": {"mode": "Off"},
            "iommu": False,
            "watchdog": False,
            "pvpanic": False,
        }

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    # Short paths: unix socket names are limited to 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="clh-", dir="/tmp"))
    box = Sandbox(root)
    try:
        yield box
    finally:
        box.close()
        shutil.rmtree(root, ignore_errors=True)


async def agent_health(hybrid: Path, within: float) -> int:
    """Poll the hybrid socket until the agent's port accepts, then Health.Check."""
    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_unix_connection(str(hybrid))
            try:
                writer.write(b"CONNECT 1024\n")
                ok = (await asyncio.wait_for(reader.readline(), 30)).startswith(b"OK ")
            except TimeoutError:
                ok = False
            finally:
                writer.close()
            if ok:
                break
        assert time.monotonic() < deadline, f"agent not reachable within {within}s"
        await asyncio.sleep(0.2)
    async with await Client.connect(f"hvsock://{hybrid}:1024", timeout=30) as client:
        reply = await client.call(
            "grpc.Health",
            "Check",
            health_pb2.CheckRequest(),
            health_pb2.HealthCheckResponse,
            timeout=30,
        )
    return int(reply.status)


async def test_boot_to_health_check_then_vmm_shutdown(
    guest_artifacts: build.Result, sandbox: Sandbox, record_property: Any
) -> None:
    sandbox.start_virtiofsd()
    launcher = sandbox.start_launcher()
    assert call(sandbox.api, "PUT", "vm.create", sandbox.vm_config(guest_artifacts), 10)[0] == 204
    status, info = call(sandbox.api, "GET", "vm.info")
    assert status == 200 and info["state"] == "Created"
    assert info["memory_actual_size"] == 1024 * MIB

    started = time.monotonic()
    assert call(sandbox.api, "PUT", "vm.boot", timeout=10)[0] == 204
    boot_answer = time.monotonic() - started
    assert boot_answer < 5, f"vm.boot took {boot_answer:.1f}s"
    status, info = call(sandbox.api, "GET", "vm.info")
    assert status == 200 and info["state"] == "Running"
    # Sent on every sandbox start, even unchanged.
    assert call(sandbox.api, "PUT", "vm.resize", {"desired_vcpus": 1}, 1)[0] == 204
    assert call(sandbox.api, "PUT", "vm.resize", {"desired_ram": 1024 * MIB}, 1)[0] == 204

    assert await agent_health(sandbox.hybrid, within=240) == health_pb2.HealthCheckResponse.SERVING
    to_health = time.monotonic() - started
    record_property("clh_boot_to_health_s", round(to_health, 1))
    print(
        f"vm.boot answered in {boot_answer:.2f}s; "
        f"Health.Check SERVING {to_health:.1f}s after vm.boot"
    )

    # Hot-plug a disk on bus 0 and take it away again, within the shim's 5 s.
    disk = sandbox.root / "disk.img"
    disk.write_bytes(b"\0" * MIB)
    status, device = call(
        sandbox.api, "PUT", "vm.add-disk", {"path": str(disk), "readonly": True}, 5
    )
    assert status == 200, device
    assert device["bdf"].startswith("0000:00:") and device["bdf"].endswith(".0")
    assert call(sandbox.api, "PUT", "vm.remove-device", {"id": device["id"]}, 5)[0] == 204

    console = (sandbox.root / "clh-console.log").read_text(errors="replace")
    assert "Linux version" in console
    children = descendants(launcher.pid)
    assert len(children) >= 2  # QEMU and the vsock back-end

    started = time.monotonic()
    assert call(sandbox.api, "PUT", "vmm.shutdown", timeout=3)[0] == 204
    launcher.wait(timeout=3)
    assert time.monotonic() - started < 3
    assert launcher.returncode == 0
    await asyncio.sleep(0.2)
    assert all(gone(pid) for pid in children), [p for p in children if not gone(p)]
    # Serial mode Tty: the guest's console also went to the launcher's stdout.
    assert "Linux version" in (sandbox.root / "launcher.stdout").read_text(errors="replace")


def test_sigkill_of_the_launcher_takes_its_children_along(
    guest_artifacts: build.Result, sandbox: Sandbox
) -> None:
    sandbox.start_virtiofsd()
    launcher = sandbox.start_launcher()
    config = sandbox.vm_config(guest_artifacts)
    config["serial"] = {"mode": "Off"}
    assert call(sandbox.api, "PUT", "vm.create", config, 10)[0] == 204
    assert call(sandbox.api, "PUT", "vm.boot", timeout=10)[0] == 204
    children = descendants(launcher.pid)
    assert len(children) >= 2
    os.kill(launcher.pid, signal.SIGKILL)
    launcher.wait(timeout=5)
    deadline = time.monotonic() + 5
    while not all(gone(pid) for pid in children):
        assert time.monotonic() < deadline, [p for p in children if not gone(p)]
        time.sleep(0.05)
