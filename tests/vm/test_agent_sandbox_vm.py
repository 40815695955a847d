"""The agent as the guest's real PID 1 (the builder's initrd under TCG): sandbox RPCs over
hybrid vsock, the kataShared virtio-fs, and DestroySandbox powering the VM off."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Any

import pytest

from pykata.builder import build
from pykata.host.vm.runner import VM
from pykata.protocols import agent_pb2
from pykata.ttrpc import Client

pytestmark = [
    pytest.mark.vm,
]

SHARED = "/run/kata-containers/shared/containers"
SHM = "/run/kata-containers/sandbox/shm"
RPC_TIMEOUT = 60.0


def read(path: Path) -> bytes:
    return path.read_bytes()


async def exited(vm: VM, within: float) -> int | None:
    qemu = vm.procs["qemu"]
    for _ in range(int(within * 10)):
        if qemu.poll() is not None:
            return qemu.returncode
        await asyncio.sleep(0.1)
    return None


async def test_sandbox_lifecycle_as_pid1(
    guest_artifacts: build.Result, tmp_path_factory: pytest.TempPathFactory
) -> None:
    shared = tmp_path_factory.mktemp("shared")
    async with VM(guest_artifacts.kernel, guest_artifacts.artifact, shared_dir=shared) as vm:
        await vm.wait_port(1024, within=240)
        async with await Client.connect(vm.agent_address, timeout=30) as client:
            agent: Any = client.stub(agent_pb2.DESCRIPTOR.services_by_name["AgentService"])
            details = await agent.GetGuestDetails(
                agent_pb2.GuestDetailsRequest(mem_block_size=True), timeout=RPC_TIMEOUT
            )
            assert details.agent_details.init_daemon
            assert details.mem_block_size_bytes > 0
            await agent.CreateSandbox(
                agent_pb2.CreateSandboxRequest(
                    hostname="vm-pod",
                    sandbox_id="vm-sandbox",
                    dns=["nameserver 10.0.0.1"],
                    sandbox_pidns=True,
                    storages=[
                        agent_pb2.Storage(
                            driver="virtio-fs",
                            source="kataShared",
                            fstype="virtiofs",
                            mount_point=SHARED,
                        ),
                        agent_pb2.Storage(
                            driver="ephemeral",
                            fstype="tmpfs",
                            options=["size=4m"],
                            mount_point=SHM,
                        ),
                    ],
                ),
                timeout=RPC_TIMEOUT,
            )
            # Written by the agent in the guest, seen on the host through virtio-fs.
            await agent.CopyFile(
                agent_pb2.CopyFileRequest(
                    path=f"{SHARED}/vm-sandbox/hosts",
                    file_size=10,
                    file_mode=stat.S_IFREG | 0o644,
                    dir_mode=0o755,
                    data=b"127.0.0.1\n",
                ),
                timeout=RPC_TIMEOUT,
            )
            assert read(shared / "vm-sandbox" / "hosts") == b"127.0.0.1\n"
            stats = await agent.GetVolumeStats(
                agent_pb2.VolumeStatsRequest(volume_guest_path=SHM), timeout=RPC_TIMEOUT
            )
            assert stats.usage[0].total == 4 * 1024 * 1024
            await agent.DestroySandbox(agent_pb2.DestroySandboxRequest(), timeout=RPC_TIMEOUT)
        # PID 1 syncs and powers off: QEMU ends by itself, cleanly.
        assert await exited(vm, within=60) == 0
