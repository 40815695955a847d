"""Faults in the VM tier: a helper process or the guest's memory fails under a running agent.

Each test boots its own TCG guest (initrd with the agent as PID 1) with a sandbox on the
kataShared virtio-fs, breaks something, and checks that the agent keeps answering (every
call bounded by a timeout, so a hung agent fails the test instead of hanging it):

- virtiofsd killed under a running container: the agent, the container's process (signal,
  wait, exit status) and RemoveContainer still answer; DestroySandbox powers the VM off.
- guest memory exhausted by a container without a memory limit: the guest's OOM killer
  takes the container's process, not the agent (PID 1, oom_score_adj -997); WaitProcess
  reports 137, GetOOMEvent the container, and a new container runs afterwards.
- the vsock back-end killed: the guest and its agent live on, unreachable; a restarted
  back-end is never reconnected by QEMU 7.2 (its vhost-user-vsock device has no reconnect
  support), so the host has lost the sandbox; the VM still stops cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from google.protobuf import empty_pb2
from google.protobuf.message import Message

from pykata.builder.build import Result
from pykata.host.ctl.methods import METHODS
from pykata.host.ctl.run import HOSTNAME, SHARED_STORAGE
from pykata.host.ctl.session import Session, open_session
from pykata.host.ctl.share import share_rootfs, unshare_rootfs
from pykata.host.ctl.spec import ProcessOptions, build_spec
from pykata.host.ctl.target import Target
from pykata.host.rootfs import make_busybox_rootfs
from pykata.host.vm.runner import VM
from pykata.host.vm.state import AGENT_PORT
from pykata.protocols import agent_pb2, health_pb2
from pykata.ttrpc.errors import TtrpcError

pytestmark = [pytest.mark.vm, pytest.mark.root, pytest.mark.asyncio]

BOOT_TIMEOUT = 300.0  # TCG on a busy 2-core host
CALL_TIMEOUT = 60.0
FAULT_WAIT = 30.0  # for calls that may never be answered after a fault
M = TypeVar("M", bound=Message)


class Guest:
    """One booted VM's agent with a sandbox; containers on a shared busybox folder."""

    def __init__(self, vm: VM, session: Session, rootfs: Path) -> None:
        self.vm = vm
        self.session = session
        self.rootfs = rootfs
        self.target = Target(address=vm.agent_address, name=vm.name, shared_dir=vm.shared_dir)
        self.mounts: dict[str, Path] = {}

    async def call(
        self, name: str, request: Message, reply: type[M], within: float = CALL_TIMEOUT
    ) -> M:
        """Any AgentService call, blocking ones included, bounded by ``within`` seconds."""
        method = METHODS[name]
        return await asyncio.wait_for(
            self.session.client.call(method.service, name, request, reply, within), within
        )

    async def call_empty(self, name: str, request: Message, within: float = CALL_TIMEOUT) -> None:
        await self.call(name, request, empty_pb2.Empty, within)

    async def health(self) -> int:
        reply = await asyncio.wait_for(
            self.session.client.call(
                "grpc.Health", "Check", health_pb2.CheckRequest(),
                health_pb2.HealthCheckResponse, CALL_TIMEOUT,
            ),
            CALL_TIMEOUT,
        )  # fmt: skip
        return reply.status

    async def create(self, args: list[str]) -> str:
        cid = f"fault-{secrets.token_hex(4)}"
        root, self.mounts[cid] = share_rootfs(self.target, cid, self.rootfs)
        spec = build_spec(ProcessOptions(args=args), root, HOSTNAME)
        await self.call_empty(
            "CreateContainer",
            agent_pb2.CreateContainerRequest(container_id=cid, exec_id=cid, OCI=spec),
        )
        await self.call_empty("StartContainer", agent_pb2.StartContainerRequest(container_id=cid))
        return cid

    async def output(self, cid: str, within: float = CALL_TIMEOUT) -> bytes:
        data = b""
        request = agent_pb2.ReadStreamRequest(container_id=cid, exec_id=cid, len=65536)
        while True:
            reply = await self.call("ReadStdout", request, agent_pb2.ReadStreamResponse, within)
            if not reply.data:
                return data
            data += reply.data

    async def wait(self, cid: str, within: float = CALL_TIMEOUT) -> int:
        request = agent_pb2.WaitProcessRequest(container_id=cid, exec_id=cid)
        reply = await self.call("WaitProcess", request, agent_pb2.WaitProcessResponse, within)
        return reply.status

    async def remove(self, cid: str, within: float = CALL_TIMEOUT) -> None:
        request = agent_pb2.RemoveContainerRequest(container_id=cid)
        await self.call_empty("RemoveContainer", request, within)

    def unshare_all(self) -> None:
        for mount in self.mounts.values():
            with contextlib.suppress(OSError, Exception):
                unshare_rootfs(mount)
        self.mounts.clear()


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Short: unix socket paths are limited to 107 bytes.
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"pykata-fault-{secrets.token_hex(3)}"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextlib.asynccontextmanager
async def booted(artifacts: Result, workdir: Path, memory_mib: int = 1024) -> AsyncIterator[Guest]:
    """A VM with the agent answering and a sandbox on the kataShared virtio-fs."""
    vm = VM(
        artifacts.kernel,
        artifacts.artifact,
        shared_dir=workdir / "shared",
        workdir=workdir / "vm",
        name=f"fault-{os.getpid()}",
        memory_mib=memory_mib,
    )
    async with vm:
        t0 = time.monotonic()
        async with open_session(vm.agent_address, BOOT_TIMEOUT) as probe:
            await probe.client.call(
                "grpc.Health", "Check", health_pb2.CheckRequest(),
                health_pb2.HealthCheckResponse, timeout=BOOT_TIMEOUT,
            )  # fmt: skip
        print(f"\nboot to first Health.Check: {time.monotonic() - t0:.1f}s ({vm.accel})")
        async with open_session(vm.agent_address, CALL_TIMEOUT) as session:
            guest = Guest(vm, session, make_busybox_rootfs(workdir / "rootfs"))
            await guest.call_empty(
                "CreateSandbox",
                agent_pb2.CreateSandboxRequest(
                    hostname=HOSTNAME, sandbox_id=vm.name, storages=[SHARED_STORAGE]
                ),
            )
            try:
                yield guest
            except BaseException:
                tail = vm.console_log.read_text(errors="replace")[-4000:]
                print(f"--- guest console (tail) ---\n{tail}")
                raise
            finally:
                guest.unshare_all()


async def assert_agent_serves(guest: Guest) -> None:
    assert await guest.health() == health_pb2.HealthCheckResponse.SERVING
    interfaces = await guest.call(
        "ListInterfaces", agent_pb2.ListInterfacesRequest(), agent_pb2.Interfaces
    )
    assert "lo" in [i.name for i in interfaces.Interfaces]
    details = await guest.call(
        "GetGuestDetails", agent_pb2.GuestDetailsRequest(), agent_pb2.GuestDetailsResponse
    )
    assert details.agent_details.init_daemon


async def test_virtiofsd_killed_under_a_running_container(
    guest_artifacts: Result, workdir: Path
) -> None:
    async with booted(guest_artifacts, workdir) as guest:
        vm = guest.vm
        cid = await guest.create(["sleep", "1000"])
        await asyncio.sleep(2)  # `sleep` runs (exec'd from the share) before the kill
        virtiofsd = vm.procs["virtiofsd"]
        os.kill(vm.pids["virtiofsd"], signal.SIGKILL)
        assert await asyncio.to_thread(virtiofsd.wait, 10) == -signal.SIGKILL
        await assert_agent_serves(guest)

        await guest.call_empty(
            "SignalProcess",
            agent_pb2.SignalProcessRequest(container_id=cid, exec_id=cid, signal=signal.SIGKILL),
        )
        assert await guest.output(cid) == b""  # it closed its files: stdout reports EOF
        # The killed process cannot finish exiting: dropping its last reference to its
        # executable sends a synchronous FUSE RELEASE that the guest kernel waits for
        # without a timeout, and no daemon answers any more. WaitProcess stays pending
        # (bounded here) while the agent goes on serving everything else.
        waiter = asyncio.ensure_future(guest.wait(cid, within=FAULT_WAIT))
        await assert_agent_serves(guest)
        try:
            status: int | None = await waiter
        except (TimeoutError, TtrpcError):
            status = None
        print(f"WaitProcess after the kill: {status}")
        assert status in (None, 128 + signal.SIGKILL)
        # RemoveContainer with the root on the dead share answers (an error: the teardown
        # steps that touch the share are bounded and run off the event loop), and the agent
        # goes on answering.
        with contextlib.suppress(TtrpcError):
            await guest.remove(cid, within=FAULT_WAIT)
        await assert_agent_serves(guest)
        assert vm.procs["qemu"].poll() is None
        with contextlib.suppress(TimeoutError, TtrpcError):
            await guest.call_empty(
                "DestroySandbox", agent_pb2.DestroySandboxRequest(), within=FAULT_WAIT
            )
        # sync would wait for the dead share forever; PID 1 bounds it and powers off.
        powered_off = await asyncio.to_thread(wait_exit_code, vm.procs["qemu"], FAULT_WAIT)
        assert powered_off == 0, "DestroySandbox did not power the VM off"
    # Otherwise the runner stopped it: every process and the shared folder's mount are gone.
    assert vm.procs == {}
    assert not await asyncio.to_thread(os.path.ismount, workdir / "shared")


def wait_exit_code(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


async def test_guest_memory_exhausted_by_a_container(
    guest_artifacts: Result, workdir: Path
) -> None:
    async with booted(guest_artifacts, workdir, memory_mib=512) as guest:
        oom = asyncio.ensure_future(
            guest.call("GetOOMEvent", agent_pb2.GetOOMEventRequest(), agent_pb2.OOMEvent, 600)
        )
        try:
            # No memory limit: tail keeps a line that never ends and grows until the
            # guest's OOM killer takes it.
            cid = await guest.create(["tail", "/dev/zero"])
            assert await guest.output(cid, within=600) == b""
            assert await guest.wait(cid) == 128 + signal.SIGKILL
            event = await asyncio.wait_for(oom, CALL_TIMEOUT)
            assert event.container_id == cid
        finally:
            oom.cancel()
        console = guest.vm.console_log.read_text(errors="replace")
        assert re.search(r"Out of memory: Killed process \d+ \(tail\)", console)
        await guest.remove(cid)
        await assert_agent_serves(guest)

        after = await guest.create(["sh", "-c", "echo still here"])
        assert await guest.output(after) == b"still here\n"
        assert await guest.wait(after) == 0
        await guest.remove(after)
        await guest.call_empty("DestroySandbox", agent_pb2.DestroySandboxRequest())
        assert await asyncio.to_thread(guest.vm.procs["qemu"].wait, CALL_TIMEOUT) == 0


async def test_vsock_backend_killed_is_not_reconnected(
    guest_artifacts: Result, workdir: Path
) -> None:
    async with booted(guest_artifacts, workdir) as guest:
        vm = guest.vm
        await guest.create(["sleep", "1000"])
        backend = vm.procs["vsock"]
        backend.kill()
        await asyncio.to_thread(backend.wait, 10)
        with pytest.raises((OSError, TimeoutError, TtrpcError)):
            await guest.health()  # the connection died with the back-end
        # A new back-end on the same sockets: QEMU never connects to it again (no
        # reconnect= on the chardev: QEMU 7.2's vhost-user-vsock fails to start with it,
        # and has no code to redo the vhost-user setup on a new connection).
        log_path = workdir / "vsock2.log"
        restarted = start_vsock_backend(vm, log_path)
        try:
            assert restarted.stdout is not None
            ready = await asyncio.to_thread(restarted.stdout.readline)
            assert ready.strip() == b"READY"
            await asyncio.sleep(10)
            assert "front-end connected" not in log_path.read_text()
            assert not await hybrid_connects(vm.hybrid_socket, AGENT_PORT)
        finally:
            restarted.terminate()
            await asyncio.to_thread(restarted.wait, 10)
            if restarted.stdout is not None:
                restarted.stdout.close()
        # PID 1 dying panics the guest (panic=1, -no-reboot): QEMU running means the agent
        # lives on, with its sandbox and container, out of the host's reach.
        assert vm.procs["qemu"].poll() is None


async def hybrid_connects(path: Path, port: int) -> bool:
    """Whether a hybrid vsock CONNECT to the guest's ``port`` gets its OK."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(f"CONNECT {port}\n".encode())
        return (await asyncio.wait_for(reader.readline(), CALL_TIMEOUT)).startswith(b"OK ")
    finally:
        writer.close()


def start_vsock_backend(vm: VM, log_path: Path) -> subprocess.Popen[bytes]:
    """Another vsock back-end on the VM's sockets (the runner's own one is dead)."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [
                sys.executable, "-m", "pykata.host.vsock",
                "--socket", str(vm.workdir / "vhost-vsock.sock"),
                "--uds-path", str(vm.hybrid_socket), "--connect-timeout", "2",
            ],
            stdout=subprocess.PIPE, stderr=log,
        )  # fmt: skip
