"""Sandbox lifecycle through the real agent: CreateSandbox, guest RPCs, DestroySandbox.

Tests run in file order against one agent; the last one destroys the sandbox, after which
the agent (not PID 1 here) exits, as the harness expects.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pykata.agent.mount import mount_points
from pykata.protocols import agent_pb2
from pykata.ttrpc.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

BASE = "/run/kata-containers"
SANDBOX = f"{BASE}/sandbox"
SHARED = f"{BASE}/shared/containers"
EPHEMERAL = f"{SANDBOX}/ephemeral/shm"
LOCAL = f"{SANDBOX}/local/cache"
WATCHABLE = f"{SHARED}/watchable/config"
BIND_SOURCE = f"{SHARED}/configmap"


def kata_mounts(agent_pid: int) -> list[str]:
    """Mounts this module's sandbox makes (other agents on a dev host use other paths)."""
    return [
        point
        for point, _ in mount_points()
        if point.startswith((EPHEMERAL, LOCAL, WATCHABLE, f"{SANDBOX}/ns/{agent_pid}/"))
    ]


def exists(path: str) -> bool:
    return os.path.exists(path)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def run(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def children_states(pid: int) -> list[str]:
    states = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            states.append(fields[0])
    return states


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def storages() -> list[agent_pb2.Storage]:
    return [
        agent_pb2.Storage(
            driver="ephemeral",
            source="shm",
            fstype="tmpfs",
            options=["size=8m", "mode=1777", "fsgid=100"],
            mount_point=EPHEMERAL,
        ),
        agent_pb2.Storage(driver="local", options=["mode=0750"], mount_point=LOCAL),
        agent_pb2.Storage(driver="watchable-bind", source=BIND_SOURCE, mount_point=WATCHABLE),
    ]


@pytest.fixture(scope="module")
def baseline_fds(agent_process: subprocess.Popen[bytes]) -> int:
    return open_fds(agent_process.pid)


async def test_guest_details_before_sandbox(agent: Any, baseline_fds: int) -> None:
    resp = await agent.GetGuestDetails(
        agent_pb2.GuestDetailsRequest(mem_block_size=True, mem_hotplug_probe=True)
    )
    details = resp.agent_details
    assert details.version
    assert not details.init_daemon
    assert {"virtio-fs", "local", "ephemeral", "overlayfs", "watchable-bind"} <= set(
        details.storage_handlers
    )
    if exists("/sys/devices/system/memory/block_size_bytes"):
        assert resp.mem_block_size_bytes > 0 and resp.mem_block_size_bytes % 4096 == 0


@pytest.mark.parametrize(
    "request_",
    [
        agent_pb2.CreateSandboxRequest(sandbox_id="../etc"),
        agent_pb2.CreateSandboxRequest(hostname="h" * 65),
        agent_pb2.CreateSandboxRequest(dns=["nameserver 1.1.1.1\nnameserver 6.6.6.6"]),
        agent_pb2.CreateSandboxRequest(kernel_modules=[agent_pb2.KernelModule(name="../x")]),
        agent_pb2.CreateSandboxRequest(
            storages=[agent_pb2.Storage(driver="floppy", mount_point=f"{SANDBOX}/x")]
        ),
        agent_pb2.CreateSandboxRequest(
            storages=[agent_pb2.Storage(driver="local", mount_point="/etc/pykata-escape")]
        ),
        agent_pb2.CreateSandboxRequest(
            storages=[agent_pb2.Storage(driver="local", mount_point=f"{BASE}/../../etc/x")]
        ),
    ],
    ids=["sandbox-id", "hostname", "dns", "module", "driver", "mount-point", "dotdot"],
)
async def test_create_sandbox_rejects_bad_input(
    agent: Any, agent_process: subprocess.Popen[bytes], request_: Any
) -> None:
    with pytest.raises(InvalidArgument):
        await agent.CreateSandbox(request_)
    assert not exists("/etc/pykata-escape")
    assert kata_mounts(agent_process.pid) == []


async def test_failed_create_rolls_back(agent: Any, agent_process: subprocess.Popen[bytes]) -> None:
    req = agent_pb2.CreateSandboxRequest(
        hostname="rollback",
        storages=[agent_pb2.Storage(driver="local", mount_point=LOCAL)],
        kernel_modules=[agent_pb2.KernelModule(name="pykata_no_such_module")],
    )
    with pytest.raises(FailedPrecondition, match="pykata_no_such_module"):
        await agent.CreateSandbox(req)
    assert kata_mounts(agent_process.pid) == []
    assert not exists(LOCAL)


async def test_create_sandbox(agent: Any, agent_process: subprocess.Popen[bytes]) -> None:
    os.makedirs(BIND_SOURCE, exist_ok=True)
    write(f"{BIND_SOURCE}/key", b"value")
    host_resolv = read("/etc/resolv.conf")
    host_name = socket.gethostname()
    await agent.CreateSandbox(
        agent_pb2.CreateSandboxRequest(
            hostname="pod-one",
            sandbox_id="sandbox-1",
            dns=["nameserver 10.0.0.10", "search svc.cluster.local"],
            storages=storages(),
            sandbox_pidns=True,
            guest_hook_path="/usr/share/oci/hooks",
        )
    )
    mounts = dict(mount_points())
    assert mounts[EPHEMERAL] == "tmpfs"
    ephemeral = os.stat(EPHEMERAL)
    assert ephemeral.st_gid == 100 and ephemeral.st_mode & stat.S_ISGID
    assert stat.S_IMODE(os.stat(LOCAL).st_mode) == 0o750
    # A small shared directory is copied onto its own tmpfs (and watched), as Kata does.
    assert mounts[WATCHABLE] == "tmpfs"
    assert read(f"{WATCHABLE}/key") == b"value"
    # Shared namespaces: the UTS one carries the pod's hostname, the host keeps its own.
    ns = f"{SANDBOX}/ns/{agent_process.pid}"
    assert mounts[f"{ns}/uts"] == "nsfs" and mounts[f"{ns}/ipc"] == "nsfs"
    assert run(["nsenter", f"--uts={ns}/uts", "hostname"]).strip() == "pod-one"
    assert socket.gethostname() == host_name
    assert read(f"{SANDBOX}/resolv.conf") == b"nameserver 10.0.0.10\nsearch svc.cluster.local\n"
    assert read("/etc/resolv.conf") == host_resolv  # not PID 1: left alone


async def test_second_create_sandbox_is_refused(agent: Any) -> None:
    with pytest.raises(AlreadyExists):
        await agent.CreateSandbox(agent_pb2.CreateSandboxRequest(hostname="again"))


async def test_sandbox_pidns_starts_no_process(
    agent_process: subprocess.Popen[bytes], agent_log: Path
) -> None:
    # As in the Rust agent, the first container's pid namespace is the sandbox's: no holder.
    # The OCI runtime probe the agent starts right after listening runs children meanwhile.
    for _ in range(200):
        text = await asyncio.to_thread(agent_log.read_text)
        if "using OCI runtime" in text or "no usable OCI runtime" in text:
            break
        await asyncio.sleep(0.05)
    children = [
        p for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == agent_process.pid
    ]
    assert children == []


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


async def test_copy_file(agent: Any) -> None:
    target = f"{SHARED}/sandbox-1/etc/hosts"
    await agent.CopyFile(
        agent_pb2.CopyFileRequest(
            path=target,
            file_size=10,
            file_mode=stat.S_IFREG | 0o644,
            dir_mode=0o755,
            uid=0,
            gid=0,
            data=b"127.0.0.1\n",
        )
    )
    assert read(target) == b"127.0.0.1\n"
    for escape in ("/etc/pykata-copy", f"{SHARED}/../../../etc/pykata-copy", f"{SHARED}/../x"):
        with pytest.raises(InvalidArgument):
            await agent.CopyFile(
                agent_pb2.CopyFileRequest(
                    path=escape, file_size=1, file_mode=stat.S_IFREG | 0o644, data=b"x"
                )
            )
    assert not exists("/etc/pykata-copy")


async def test_volume_stats(agent: Any) -> None:
    resp = await agent.GetVolumeStats(agent_pb2.VolumeStatsRequest(volume_guest_path=EPHEMERAL))
    by_unit = {u.unit: u for u in resp.usage}
    assert by_unit[1].total == 8 * 1024 * 1024  # BYTES: the tmpfs size= option
    assert by_unit[2].total > 0  # INODES
    assert resp.volume_condition.message == "OK"
    with pytest.raises(NotFound):
        await agent.GetVolumeStats(
            agent_pb2.VolumeStatsRequest(volume_guest_path=f"{SANDBOX}/missing")
        )
    with pytest.raises(InvalidArgument):
        await agent.GetVolumeStats(agent_pb2.VolumeStatsRequest(volume_guest_path="/etc"))


async def test_update_ephemeral_mounts(agent: Any) -> None:
    extra = f"{SANDBOX}/ephemeral/extra"
    await agent.UpdateEphemeralMounts(
        agent_pb2.UpdateEphemeralMountsRequest(
            storages=[
                agent_pb2.Storage(
                    driver="ephemeral",
                    fstype="tmpfs",
                    options=["remount", "size=16m"],
                    mount_point=EPHEMERAL,
                ),
                agent_pb2.Storage(driver="ephemeral", fstype="tmpfs", mount_point=extra),
            ]
        )
    )
    assert dict(mount_points())[extra] == "tmpfs"
    resized = os.statvfs(EPHEMERAL)
    assert resized.f_blocks * resized.f_frsize == 16 * 1024 * 1024
    with pytest.raises(InvalidArgument, match="local"):
        await agent.UpdateEphemeralMounts(
            agent_pb2.UpdateEphemeralMountsRequest(
                storages=[agent_pb2.Storage(driver="ephemeral", mount_point=LOCAL)]
            )
        )
    with pytest.raises(InvalidArgument):
        await agent.UpdateEphemeralMounts(
            agent_pb2.UpdateEphemeralMountsRequest(
                storages=[agent_pb2.Storage(driver="local", mount_point=f"{SANDBOX}/l")]
            )
        )


async def test_small_guest_rpcs(agent: Any) -> None:
    metrics = (await agent.GetMetrics(agent_pb2.GetMetricsRequest())).metrics
    assert "kata_agent_process_resident_memory_bytes" in metrics
    assert 'kata_guest_meminfo{item="mem_total"}' in metrics
    await agent.ReseedRandomDev(agent_pb2.ReseedRandomDevRequest(data=os.urandom(32)))
    with pytest.raises(InvalidArgument):
        await agent.ReseedRandomDev(agent_pb2.ReseedRandomDevRequest())
    with pytest.raises(InvalidArgument):
        await agent.SetGuestDateTime(agent_pb2.SetGuestDateTimeRequest(Sec=1, Usec=5_000_000))
    await agent.RemoveStaleVirtiofsShareMounts(agent_pb2.RemoveStaleVirtiofsShareMountsRequest())
    # One CPU online is always true: nothing of the host's is changed.
    await agent.OnlineCPUMem(agent_pb2.OnlineCPUMemRequest(nb_cpus=1, cpu_only=True))


async def test_destroy_sandbox_cleans_everything_and_exits(
    agent: Any, agent_process: subprocess.Popen[bytes], baseline_fds: int
) -> None:
    assert open_fds(agent_process.pid) <= baseline_fds + 2  # this test's own connection
    assert "Z" not in children_states(agent_process.pid)
    await agent.DestroySandbox(agent_pb2.DestroySandboxRequest())
    assert agent_process.wait(timeout=15) == 0
    assert kata_mounts(agent_process.pid) == []
    ns = f"{SANDBOX}/ns/{agent_process.pid}"
    for path in (EPHEMERAL, LOCAL, WATCHABLE, ns, f"{SANDBOX}/resolv.conf"):
        assert not exists(path), path
    assert read(f"{BIND_SOURCE}/key") == b"value"  # a bind source is not ours
