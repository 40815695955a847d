"""A virtio-net NIC in our guest, configured over the agent API, reaching the host end.

The NIC's TAP lives in a network namespace held by ``unshare --net -- sleep 600`` (never the
host's): QEMU is started inside it and creates the tap there; the test gives the tap end
10.99.0.1/24. Over hybrid vsock: CreateSandbox, UpdateInterface (the NIC's MAC → eth0,
10.99.0.2/24), UpdateRoutes (link route, default via the tap end), ListInterfaces; then a
busybox container pings the tap end, and the namespace's neighbour table has the guest's MAC.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from guest_containers import run_to_exit

from pykata.builder.build import Result
from pykata.host.ctl.run import HOSTNAME, SHARED_STORAGE
from pykata.host.ctl.session import Session, open_session
from pykata.host.ctl.share import share_rootfs, unshare_rootfs
from pykata.host.ctl.spec import ProcessOptions, build_spec
from pykata.host.ctl.target import Target
from pykata.host.rootfs import make_busybox_rootfs
from pykata.host.vm import netns
from pykata.host.vm.runner import VM, Nic, VMError
from pykata.host.vm.state import process_alive
from pykata.protocols import agent_pb2, health_pb2, types_pb2

pytestmark = [pytest.mark.vm, pytest.mark.root, pytest.mark.asyncio]

BOOT_TIMEOUT = 300.0
CALL_TIMEOUT = 120.0
GUEST_MAC = "02:99:00:00:00:02"
TAP = "tap-kata"


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"pykata-net-{os.getpid()}"
    path.mkdir(exist_ok=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def holder() -> Iterator[int]:
    """The NIC's network namespace: a process of its own, killed afterwards."""
    proc = subprocess.Popen(["unshare", "--net", "--", "sleep", "600"])
    try:
        netns.wait_own_namespace(proc.pid)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


async def run_container(session: Session, vm: VM, rootfs: Path, script: str) -> tuple[int, str]:
    cid = f"net-{secrets.token_hex(4)}"
    target = Target(address=vm.agent_address, name=vm.name, shared_dir=vm.shared_dir)
    root, mount = share_rootfs(target, cid, rootfs)
    spec = build_spec(ProcessOptions(args=["sh", "-c", script]), root, HOSTNAME)
    try:
        return await run_to_exit(session, cid, spec)
    finally:
        unshare_rootfs(mount)


async def test_container_pings_the_tap_end(
    guest_artifacts: Result, workdir: Path, holder: int
) -> None:
    rootfs = make_busybox_rootfs(workdir / "rootfs")
    vm = VM(
        guest_artifacts.kernel,
        guest_artifacts.artifact,
        shared_dir=workdir / "shared",
        workdir=workdir / "vm",
        name=f"net-{os.getpid()}",
        nic=Nic(mac=GUEST_MAC, netns_pid=holder, tap=TAP),
    )
    async with vm:
        qemu_pid = vm.pids["qemu"]
        # QEMU runs in the holder's namespace, and so does its tap; the host has no such link.
        assert (
            os.stat(f"/proc/{qemu_pid}/ns/net").st_ino == os.stat(f"/proc/{holder}/ns/net").st_ino
        )
        assert TAP not in netns.link_names(os.getpid())
        netns.configure_link(holder, TAP, "10.99.0.1/24")

        async with open_session(vm.agent_address, BOOT_TIMEOUT) as probe:
            await probe.client.call(
                "grpc.Health", "Check", health_pb2.CheckRequest(),
                health_pb2.HealthCheckResponse, timeout=BOOT_TIMEOUT,
            )  # fmt: skip
        async with open_session(vm.agent_address, CALL_TIMEOUT) as session:
            await session.agent_empty(
                "CreateSandbox",
                agent_pb2.CreateSandboxRequest(
                    hostname=HOSTNAME, sandbox_id=vm.name, storages=[SHARED_STORAGE]
                ),
            )
            interface = types_pb2.Interface(
                device="eth0",
                name="eth0",
                IPAddresses=[
                    types_pb2.IPAddress(family=types_pb2.v4, address="10.99.0.2", mask="24")
                ],
                mtu=1500,
                hwAddr=GUEST_MAC,
            )
            reply = await session.agent(
                "UpdateInterface",
                agent_pb2.UpdateInterfaceRequest(interface=interface),
                types_pb2.Interface,
            )
            assert (reply.name, reply.hwAddr) == ("eth0", GUEST_MAC)
            routes = agent_pb2.Routes(
                Routes=[
                    types_pb2.Route(
                        dest="10.99.0.0/24", device="eth0", scope=253, source="10.99.0.2"
                    ),
                    types_pb2.Route(gateway="10.99.0.1", device="eth0"),
                ]
            )
            routed = await session.agent(
                "UpdateRoutes", agent_pb2.UpdateRoutesRequest(routes=routes), agent_pb2.Routes
            )
            assert ("", "10.99.0.1") in {(r.dest, r.gateway) for r in routed.Routes}
            listed = await session.agent(
                "ListInterfaces", agent_pb2.ListInterfacesRequest(), agent_pb2.Interfaces
            )
            (eth0,) = [i for i in listed.Interfaces if i.hwAddr == GUEST_MAC]
            assert eth0.name == "eth0" and eth0.mtu == 1500
            assert [(a.address, a.mask) for a in eth0.IPAddresses if a.family == types_pb2.v4] == [
                ("10.99.0.2", "24")
            ]

            code, out = await run_container(session, vm, rootfs, "ping -c 1 -W 10 10.99.0.1")
            assert code == 0, out
            assert "1 packets received" in out

        neighbours = netns.ip(holder, "neigh", "show", "dev", TAP)
        assert {(n["dst"], n.get("lladdr")) for n in neighbours} >= {("10.99.0.2", GUEST_MAC)}
    # QEMU is gone, and its tap with it; the holder is the fixture's to kill.
    assert vm.procs == {}
    assert not process_alive(qemu_pid, vm.workdir)
    assert TAP not in netns.link_names(holder)


async def test_the_hosts_namespace_is_refused(guest_artifacts: Result, workdir: Path) -> None:
    vm = VM(
        guest_artifacts.kernel,
        guest_artifacts.artifact,
        workdir=workdir / "refused",
        accel="tcg",
        nic=Nic(mac=GUEST_MAC, netns_pid=os.getpid()),
    )
    with pytest.raises(VMError, match="host's network namespace"):
        await vm.start()
    assert vm.procs == {}
