"""`just demo`: build the guest, boot it, drive its agent over hybrid vsock like a Kata shim.

Steps, each with a progress line and its time: the initrd (kata-image, cached), a busybox
rootfs, QEMU boot until Health.Check answers over (hybrid) vsock, CreateSandbox with the
kataShared virtio-fs, a container on the busybox folder shared over virtio-fs, an exec
without and one with a terminal, a hot upgrade of the agent over its ops channel while the
container waits for its stdin with a ReadStdout pending (docs/ops.md), the container's exit
through the new agent, DestroySandbox, which powers the guest off.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path

from pykata.agent.version import VERSION
from pykata.builder import build
from pykata.builder.stages import BuildError, Stages
from pykata.host.agent_wheel import build_agent_wheel
from pykata.host.ctl.ops import ops_stub, upgrade
from pykata.host.ctl.run import HOSTNAME, SHARED_STORAGE
from pykata.host.ctl.session import Session, open_session
from pykata.host.ctl.share import share_rootfs, unshare_rootfs
from pykata.host.ctl.spec import ProcessOptions, build_process, build_spec
from pykata.host.ctl.stdio import ProcessIO
from pykata.host.ctl.target import Target
from pykata.host.rootfs import make_busybox_rootfs
from pykata.host.vm.runner import VM, VMError
from pykata.host.vm.state import default_shared_dir
from pykata.protocols import agent_pb2, health_pb2, ops_pb2
from pykata.ttrpc.errors import TtrpcError

NAME = "pykata-demo"
CONTAINER = "demo"
BOOT_TIMEOUT = 180.0
CALL_TIMEOUT = 60.0
POWER_OFF_TIMEOUT = 60.0
OPS_PORT = 1027
# Under TCG the new agent compiles its modules while it starts: give it time.
UPGRADE_READY_TIMEOUT = 240.0
LOG = build.Options().output / "demo.log"
INIT = (
    'echo "hello from busybox in a $(uname -m) guest, kernel $(uname -r)"; '
    'read -r line; echo "the host wrote: $line"; exit 7'
)
EXEC_PLAIN = ["sh", "-c", 'echo "exec as $(id -un) in $(pwd), pid $$"; exit 3']
EXEC_TTY = ["sh", "-c", 'echo "terminal $(tty), size $(stty size)"']


class Indented:
    """Container output on our stdout, each line marked as the guest's."""

    def __init__(self) -> None:
        self.pending = b""

    def write(self, data: bytes) -> int:
        lines = (self.pending + data).replace(b"\r\n", b"\n").split(b"\n")
        self.pending = lines.pop()
        for line in lines:
            print(f"    | {line.decode(errors='replace')}")
        return len(data)

    def flush(self) -> None:
        sys.stdout.flush()

    def close(self) -> None:
        if self.pending:
            self.write(b"\n")


async def read_line(session: Session, out: Indented) -> None:
    """Stream the container's stdout until its first complete line."""
    request = agent_pb2.ReadStreamRequest(container_id=CONTAINER, exec_id=CONTAINER, len=4096)
    while True:
        reply = await session.agent("ReadStdout", request, agent_pb2.ReadStreamResponse)
        out.write(reply.data)
        if not reply.data or b"\n" in reply.data:
            return


async def run_process(session: Session, exec_id: str, terminal: bool) -> int:
    out = Indented()
    io = ProcessIO(
        session, CONTAINER, exec_id, terminal=terminal, stdin=False, stdout=out, stderr=out
    )
    code = await io.run()
    out.close()
    return code


def pids(status: ops_pb2.StatusResponse) -> dict[str, list[int]]:
    return {c.id: [p.pid for p in c.processes] for c in status.containers}


async def hot_upgrade(vm: VM, session: Session, work: Path) -> None:
    """Replace the agent while the container runs and a ReadStdout waits on it."""
    out = Indented()
    pending = asyncio.ensure_future(read_line(session, out))
    wheel = build_agent_wheel(work / "wheels", f"{VERSION}+demo")
    print(f"    new agent: {wheel.name} ({wheel.stat().st_size // 1024} KiB)")
    async with open_session(vm.vsock_address(OPS_PORT), CALL_TIMEOUT) as ops_session:
        ops = ops_stub(ops_session.client)
        before = await ops.Status(ops_pb2.StatusRequest(), timeout=CALL_TIMEOUT)
        done = await upgrade(
            ops, wheel, ready_timeout=UPGRADE_READY_TIMEOUT, within=UPGRADE_READY_TIMEOUT + 60
        )
        after = await ops.Status(ops_pb2.StatusRequest(), timeout=CALL_TIMEOUT)
    print(f"    agent {done.from_version} -> {done.to_version}, still pid {after.pid}")
    print(f"    requests paused {done.pause_seconds:.2f}s (stop reading -> new agent ready)")
    print(f"    container processes before: {pids(before)}, after: {pids(after)}")
    print(f"    agent RSS {before.rss_bytes / 2**20:.1f} -> {after.rss_bytes / 2**20:.1f} MiB")
    version = await session.client.call(
        "grpc.Health", "Version", health_pb2.CheckRequest(),
        health_pb2.VersionCheckResponse, timeout=CALL_TIMEOUT,
    )  # fmt: skip
    print(f"    Health.Version on the connection opened before: {version.agent_version}")
    await session.agent(
        "WriteStdin",
        agent_pb2.WriteStreamRequest(container_id=CONTAINER, exec_id=CONTAINER, data=b"goodbye\n"),
        agent_pb2.WriteStreamResponse,
    )
    await pending  # the ReadStdout sent before the upgrade, answered by the new agent
    out.close()


async def drive(vm: VM, rootfs: Path, stages: Stages, work: Path) -> None:
    target = Target(address=vm.agent_address, name=NAME, shared_dir=vm.shared_dir, virtio_fs=True)
    with stages.stage(f"boot ({vm.accel}) to the first Health.Check"):
        async with open_session(vm.agent_address, BOOT_TIMEOUT) as probe:
            check = await probe.client.call(
                "grpc.Health", "Check", health_pb2.CheckRequest(),
                health_pb2.HealthCheckResponse, timeout=BOOT_TIMEOUT,
            )  # fmt: skip
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(check.status)
            print(f"    {status} over {vm.agent_address}")
    async with open_session(vm.agent_address, CALL_TIMEOUT) as session:
        with stages.stage("CreateSandbox"):
            await session.agent_empty(
                "CreateSandbox",
                agent_pb2.CreateSandboxRequest(
                    hostname=HOSTNAME, sandbox_id=NAME, storages=[SHARED_STORAGE]
                ),
            )
            print(f"    virtio-fs kataShared mounted at {SHARED_STORAGE.mount_point}")
        with stages.stage("run a busybox container"):
            root, mount = share_rootfs(target, CONTAINER, rootfs)
            print(f"    root: host {rootfs} -> {mount} -> guest {root}")
            print(f"    $ sh -c '{INIT}'")
            spec = build_spec(ProcessOptions(args=["sh", "-c", INIT]), root, HOSTNAME)
            await session.agent_empty(
                "CreateContainer",
                agent_pb2.CreateContainerRequest(
                    container_id=CONTAINER, exec_id=CONTAINER, OCI=spec
                ),
            )
            await session.agent_empty(
                "StartContainer", agent_pb2.StartContainerRequest(container_id=CONTAINER)
            )
            await read_line(session, Indented())
        with stages.stage("exec without a terminal"):
            code = await exec_process(session, EXEC_PLAIN, terminal=False)
            print(f"    exit code {code}")
        with stages.stage("exec with a terminal"):
            code = await exec_process(session, EXEC_TTY, terminal=True)
            print(f"    exit code {code}")
        with stages.stage("hot upgrade of the agent mid-container (ops channel)"):
            await hot_upgrade(vm, session, work)
        with stages.stage("the container's exit, through the new agent"):
            code = await run_process(session, CONTAINER, terminal=False)
            print(f"    exit code {code}")
            await session.agent_empty(
                "RemoveContainer", agent_pb2.RemoveContainerRequest(container_id=CONTAINER)
            )
            unshare_rootfs(mount)
        with stages.stage("DestroySandbox (the guest powers off)"):
            await session.agent_empty("DestroySandbox", agent_pb2.DestroySandboxRequest())
            qemu = vm.procs["qemu"]
            await asyncio.to_thread(qemu.wait, POWER_OFF_TIMEOUT)
            print(f"    QEMU exited with status {qemu.returncode}")


async def exec_process(session: Session, args: list[str], terminal: bool) -> int:
    exec_id = f"exec-{'tty' if terminal else 'plain'}"
    print(f"    $ {args[0]} {args[1]} '{args[2]}'")
    # A fixed size, since our own stdout need not be a terminal.
    options = ProcessOptions(args=args, terminal=terminal, rows=24, columns=80)
    await session.agent_empty(
        "ExecProcess",
        agent_pb2.ExecProcessRequest(
            container_id=CONTAINER, exec_id=exec_id, process=build_process(options)
        ),
    )
    return await run_process(session, exec_id, terminal)


async def demo(stages: Stages, work: Path) -> None:
    print("guest image (kata-image setup + build, cached):")
    build.setup(None, stages)
    guest = build.build(build.Options(flavour="initrd"), stages)
    with stages.stage("busybox rootfs"):
        rootfs = make_busybox_rootfs(work / "rootfs")
    shared = default_shared_dir(NAME)
    remove_container_root(shared)  # what an interrupted earlier run may have left
    try:
        async with VM(
            guest.kernel,
            guest.artifact,
            shared_dir=shared,
            workdir=work / "vm",
            name=NAME,
            append=f"agent.ops_vport={OPS_PORT}",
        ) as vm:
            try:
                await drive(vm, rootfs, stages, work)
            except BaseException:
                print(f"console log (last lines) of {vm.console_log}:", file=sys.stderr)
                lines = vm.console_log.read_text(errors="replace").splitlines()
                print("\n".join(lines[-30:]), file=sys.stderr)
                raise
    finally:
        # The VM's stop unmounted the folder, a container root left below it included.
        remove_container_root(shared)
        # rmdir, never a recursive delete: a mount left below would take the host folder along.
        for folder in (shared, shared.parent):
            with contextlib.suppress(FileNotFoundError):
                folder.rmdir()


def remove_container_root(shared: Path) -> None:
    leftover = shared / CONTAINER / "rootfs"
    if leftover.exists():
        unshare_rootfs(leftover)


def main() -> int:
    t0 = time.monotonic()
    stages = Stages(LOG, out=sys.stdout)
    with tempfile.TemporaryDirectory(prefix="pykata-demo-") as work:
        try:
            asyncio.run(demo(stages, Path(work)))
        except (BuildError, VMError, TtrpcError, OSError) as exc:
            print(f"demo failed: {exc}", file=sys.stderr)
            return 1
    print(f"demo: done in {time.monotonic() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
