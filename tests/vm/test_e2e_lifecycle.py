"""End to end: our initrd in a TCG guest, its agent driven over hybrid vsock like a Kata shim.

ONE VM serves every test of this module (booted once; its sandbox mounts the kataShared
virtio-fs); container roots are a busybox folder bind-mounted into the shared folder. The
tests run in file order; the last one destroys the sandbox, which powers the guest off,
and then checks the guest's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest
import pytest_asyncio

from pykata.builder.build import Result
from pykata.host.ctl.run import HOSTNAME, SHARED_STORAGE
from pykata.host.ctl.session import Session, open_session
from pykata.host.ctl.share import share_rootfs, unshare_rootfs
from pykata.host.ctl.spec import ProcessOptions, build_process, build_spec
from pykata.host.ctl.target import Target
from pykata.host.rootfs import make_busybox_rootfs
from pykata.host.vm.runner import VM
from pykata.host.vm.state import VMState
from pykata.protocols import agent_pb2, health_pb2, oci_pb2
from pykata.ttrpc.errors import DeadlineExceeded, NotFound

pytestmark = [
    pytest.mark.vm,
    pytest.mark.root,
    pytest.mark.asyncio(loop_scope="module"),
]

BOOT_TIMEOUT = 300.0  # TCG on a busy 2-core host
CALL_TIMEOUT = 120.0
MIB = 1 << 20


class Guest:
    """The agent of the test VM: containers on the shared busybox folder, their processes."""

    def __init__(self, session: Session, target: Target, rootfs: Path) -> None:
        self.session = session
        self.target = target
        self.rootfs = rootfs
        self.mounts: dict[str, Path] = {}

    async def create(
        self,
        args: list[str],
        memory_limit: int = 0,
        *,
        name: str = "",
        mounts: Sequence[oci_pb2.Mount] = (),
        shared_mounts: Sequence[agent_pb2.SharedMount] = (),
    ) -> str:
        """A started container; ``name``: its CRI name (annotation)."""
        cid = f"e2e-{secrets.token_hex(4)}"
        root, self.mounts[cid] = share_rootfs(self.target, cid, self.rootfs)
        spec = build_spec(ProcessOptions(args=args), root, HOSTNAME)
        if memory_limit:
            spec.Linux.Resources.Memory.Limit = memory_limit
        if name:
            spec.Annotations["io.kubernetes.cri.container-name"] = name
        spec.Mounts.extend(mounts)
        await self.session.agent_empty(
            "CreateContainer",
            agent_pb2.CreateContainerRequest(
                container_id=cid, exec_id=cid, OCI=spec, shared_mounts=shared_mounts
            ),
        )
        await self.session.agent_empty(
            "StartContainer", agent_pb2.StartContainerRequest(container_id=cid)
        )
        return cid

    async def exec(self, cid: str, args: list[str], terminal: bool = False) -> str:
        exec_id = f"x-{secrets.token_hex(4)}"
        options = ProcessOptions(args=args, terminal=terminal, rows=24, columns=80)
        await self.session.agent_empty(
            "ExecProcess",
            agent_pb2.ExecProcessRequest(
                container_id=cid, exec_id=exec_id, process=build_process(options)
            ),
        )
        return exec_id

    async def read(self, cid: str, eid: str, within: float | None = None) -> bytes:
        """One ReadStdout; b"" at EOF. DeadlineExceeded when nothing comes within `within`."""
        request = agent_pb2.ReadStreamRequest(container_id=cid, exec_id=eid, len=64 * 1024)
        method = ("grpc.AgentService", "ReadStdout")
        reply = await self.session.client.call(
            *method, request, agent_pb2.ReadStreamResponse, timeout=within
        )
        return reply.data

    async def output(self, cid: str, eid: str) -> bytes:
        data = b""
        while chunk := await self.read(cid, eid):
            data += chunk
        return data

    async def wait(self, cid: str, eid: str) -> int:
        reply = await self.session.agent(
            "WaitProcess",
            agent_pb2.WaitProcessRequest(container_id=cid, exec_id=eid),
            agent_pb2.WaitProcessResponse,
        )
        return reply.status

    async def signal(self, cid: str, eid: str, signum: int) -> None:
        await self.session.agent_empty(
            "SignalProcess",
            agent_pb2.SignalProcessRequest(container_id=cid, exec_id=eid, signal=signum),
        )

    async def write(self, cid: str, eid: str, data: bytes) -> None:
        await self.session.agent(
            "WriteStdin",
            agent_pb2.WriteStreamRequest(container_id=cid, exec_id=eid, data=data),
            agent_pb2.WriteStreamResponse,
        )

    async def remove(self, cid: str) -> None:
        """Kill what runs in the container, reap its init (unless a test did), remove it,
        unshare its root."""
        with contextlib.suppress(NotFound):
            await self.signal(cid, "", signal.SIGKILL)
            await self.output(cid, cid)
            await self.wait(cid, cid)
        await self.session.agent_empty(
            "RemoveContainer", agent_pb2.RemoveContainerRequest(container_id=cid)
        )
        unshare_rootfs(self.mounts.pop(cid))


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    # Short: unix socket paths are limited to 107 bytes.
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"pykata-e2e-{os.getpid()}"
    path.mkdir(exist_ok=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def runtime_dir(workdir: Path) -> Iterator[Path]:
    """A private XDG_RUNTIME_DIR: VM and CLI state files of this test stay out of /run."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_RUNTIME_DIR", str(workdir / "xdg"))
        yield workdir / "xdg"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vm(guest_artifacts: Result, workdir: Path, runtime_dir: Path) -> AsyncIterator[VM]:
    name = f"e2e-{os.getpid()}"
    shared_dir = workdir / "shared"
    machine = VM(
        guest_artifacts.kernel,
        guest_artifacts.artifact,
        shared_dir=shared_dir,
        workdir=workdir / "vm",
        name=name,
    )
    async with machine:
        # What `kata-agent-ctl vm up` records, so the CLI can target this VM with --vm.
        state = VMState(
            name=name,
            agent_address=machine.agent_address,
            shared_dir=str(shared_dir),
            console_log=str(machine.console_log),
            workdir=str(machine.workdir),
            accel=str(machine.accel),
            pids=machine.pids,
        )
        state.save()
        yield machine
        state.remove()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def session(vm: VM) -> AsyncIterator[Session]:
    t0 = time.monotonic()
    async with open_session(vm.agent_address, BOOT_TIMEOUT) as probe:
        await probe.client.call(
            "grpc.Health", "Check", health_pb2.CheckRequest(),
            health_pb2.HealthCheckResponse, timeout=BOOT_TIMEOUT,
        )  # fmt: skip
    print(f"\nboot to first Health.Check: {time.monotonic() - t0:.1f}s ({vm.accel})")
    async with open_session(vm.agent_address, CALL_TIMEOUT) as opened:
        yield opened


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def guest(session: Session, vm: VM, workdir: Path) -> Guest:
    await session.agent_empty(
        "CreateSandbox",
        agent_pb2.CreateSandboxRequest(
            hostname=HOSTNAME, sandbox_id=vm.name, storages=[SHARED_STORAGE]
        ),
    )
    target = Target(address=vm.agent_address, name=vm.name, shared_dir=vm.shared_dir)
    return Guest(session, target, make_busybox_rootfs(workdir / "rootfs"))


def ctl(vm: VM, verb: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pykata.host.ctl.main", verb, "--vm", vm.name, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CALL_TIMEOUT * 3,
    )


async def test_health_and_guest_details(session: Session, guest: Guest) -> None:
    check = await session.client.call(
        "grpc.Health", "Check", health_pb2.CheckRequest(), health_pb2.HealthCheckResponse
    )
    assert check.status == health_pb2.HealthCheckResponse.SERVING
    details = await session.agent(
        "GetGuestDetails", agent_pb2.GuestDetailsRequest(), agent_pb2.GuestDetailsResponse
    )
    assert details.agent_details.init_daemon  # the agent is the guest's PID 1
    assert "virtio-fs" in details.agent_details.storage_handlers


async def test_cli_run_output_and_exit_code(vm: VM, guest: Guest) -> None:
    script = "echo hello from $(uname -m); echo oops >&2; exit 3"
    done = await asyncio.to_thread(ctl, vm, "run", str(guest.rootfs), "--", "sh", "-c", script)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "hello from x86_64\n"
    assert done.stderr == "oops\n"


async def test_cli_run_stdin(vm: VM, guest: Guest) -> None:
    data = "".join(f"line {n}\n" for n in range(3000))
    done = await asyncio.to_thread(
        ctl, vm, "run", "-i", str(guest.rootfs), "--", "sh", "-c", "wc -l; exit 0", stdin=data
    )
    assert (done.returncode, done.stdout.strip()) == (0, "3000"), done.stderr


async def test_exec_exit_codes_and_signals(guest: Guest) -> None:
    cid = await guest.create(["sleep", "1000"])
    try:
        eid = await guest.exec(cid, ["sh", "-c", "echo out; exit 5"])
        assert await guest.output(cid, eid) == b"out\n"
        assert await guest.wait(cid, eid) == 5
        for signum in (signal.SIGTERM, signal.SIGKILL):
            eid = await guest.exec(cid, ["sleep", "1000"])
            await guest.signal(cid, eid, signum)
            await guest.output(cid, eid)
            assert await guest.wait(cid, eid) == 128 + signum
        eid = await guest.exec(cid, ["sh", "-c", "kill -USR1 $$"])
        await guest.output(cid, eid)
        assert await guest.wait(cid, eid) == 128 + signal.SIGUSR1
    finally:
        await guest.remove(cid)


async def test_tty_resize(guest: Guest) -> None:
    cid = await guest.create(["sleep", "1000"])
    try:
        eid = await guest.exec(cid, ["sh", "-c", "stty size; read line; stty size"], terminal=True)
        first = b""
        while b"\n" not in first:
            first += await guest.read(cid, eid)
        assert first.split()[:2] == [b"24", b"80"]
        await guest.session.agent_empty(
            "TtyWinResize",
            agent_pb2.TtyWinResizeRequest(container_id=cid, exec_id=eid, row=33, column=101),
        )
        await guest.write(cid, eid, b"\n")
        rest = await guest.output(cid, eid)
        assert b"33 101" in rest
        assert await guest.wait(cid, eid) == 0
    finally:
        await guest.remove(cid)


async def test_pause_resume(guest: Guest) -> None:
    cid = await guest.create(["sh", "-c", "while :; do echo tick; sleep 0.1; done"])
    try:
        assert b"tick" in await guest.read(cid, cid)
        await guest.session.agent_empty(
            "PauseContainer", agent_pb2.PauseContainerRequest(container_id=cid)
        )
        # What was written before the freeze drains; then a frozen container says nothing.
        for _ in range(5):
            try:
                await guest.read(cid, cid, within=3.0)
            except DeadlineExceeded:
                break
        else:
            pytest.fail("the paused container kept writing")
        await guest.session.agent_empty(
            "ResumeContainer", agent_pb2.ResumeContainerRequest(container_id=cid)
        )
        assert b"tick" in await guest.read(cid, cid)
    finally:
        await guest.remove(cid)


async def test_stats(guest: Guest) -> None:
    cid = await guest.create(["sleep", "1000"])
    try:
        stats = await guest.session.agent(
            "StatsContainer",
            agent_pb2.StatsContainerRequest(container_id=cid),
            agent_pb2.StatsContainerResponse,
        )
        cgroup = stats.cgroup_stats
        assert cgroup.memory_stats.usage.usage > 0
        assert cgroup.pids_stats.current >= 1
        assert cgroup.cpu_stats.cpu_usage.total_usage > 0
    finally:
        await guest.remove(cid)


async def test_oom_event(guest: Guest) -> None:
    oom = asyncio.create_task(
        guest.session.agent("GetOOMEvent", agent_pb2.GetOOMEventRequest(), agent_pb2.OOMEvent)
    )
    # tail keeps a line that never ends: it grows until the 32 MiB limit kills it.
    cid = await guest.create(["tail", "/dev/zero"], memory_limit=32 * MIB)
    try:
        event = await asyncio.wait_for(oom, CALL_TIMEOUT)
        assert event.container_id == cid
        await guest.output(cid, cid)
        assert await guest.wait(cid, cid) == 128 + signal.SIGKILL
    finally:
        oom.cancel()
        await guest.remove(cid)


async def test_shared_mount_between_containers(guest: Guest) -> None:
    # crun runs with --no-pivot in the initramfs: container roots are chroots here.
    exchange = oci_pb2.Mount(destination="/exchange", type="tmpfs", source="tmpfs")
    source = await guest.create(["sleep", "1000"], name="src", mounts=[exchange])
    sink = ""
    try:
        eid = await guest.exec(source, ["sh", "-c", "echo shared > /exchange/note"])
        assert await guest.output(source, eid) == b""
        assert await guest.wait(source, eid) == 0
        mount = agent_pb2.SharedMount(
            name="exchange", src_ctr="src", src_path="/exchange", dst_ctr="dst", dst_path="/in"
        )
        sink = await guest.create(["cat", "/in/note"], name="dst", shared_mounts=[mount])
        assert await guest.output(sink, sink) == b"shared\n"
        assert await guest.wait(sink, sink) == 0
    finally:
        if sink:
            await guest.remove(sink)
        await guest.remove(source)


async def test_destroy_powers_off_and_guest_log_is_clean(vm: VM, guest: Guest) -> None:
    await guest.session.agent_empty("DestroySandbox", agent_pb2.DestroySandboxRequest())
    qemu = vm.procs["qemu"]
    assert await asyncio.to_thread(qemu.wait, CALL_TIMEOUT) == 0
    log = vm.console_log.read_text(errors="replace")
    assert '"msg": "powering off"' in log
    records: list[dict[str, object]] = []
    for line in filter(lambda line: line.startswith("{"), log.splitlines()):
        # Kernel messages can cut into a line on the shared serial console: skip those.
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    assert records, "no agent log lines on the console"
    assert [r for r in records if r.get("level") in ("error", "critical")] == []
    assert "Traceback" not in log
