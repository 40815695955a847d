"""`run` (sandbox if needed, container on a host folder, stdio, exit code) and `exec`."""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pykata.host.ctl.errors import CtlError, UsageError
from pykata.host.ctl.network import configure_guest_network
from pykata.host.ctl.session import Session
from pykata.host.ctl.share import share_rootfs, unshare_rootfs
from pykata.host.ctl.spec import ProcessOptions, build_process, build_spec
from pykata.host.ctl.state import ContainerRecord, StateFile
from pykata.host.ctl.stdio import ProcessIO
from pykata.host.ctl.target import GUEST_SHARED_DIR, Target
from pykata.host.ctl.tty import terminal_size
from pykata.host.ctl.volume import Volume, VolumeError, Volumes, usage_check
from pykata.protocols import agent_pb2
from pykata.ttrpc.errors import AlreadyExists, NotFound, TtrpcError

HOSTNAME = "pykata"
# Kata's storage for the kataShared virtio-fs folder, mounted by the agent in CreateSandbox.
SHARED_STORAGE = agent_pb2.Storage(
    driver="virtio-fs",
    source="kataShared",
    fstype="virtiofs",
    mount_point=GUEST_SHARED_DIR,
)


@dataclass(frozen=True)
class ProcessRequest:
    args: list[str]
    env: list[str]
    cwd: str
    terminal: bool
    stdin: bool

    def options(self) -> ProcessOptions:
        rows, columns = terminal_size(sys.stdout.fileno()) if self.terminal else (0, 0)
        return ProcessOptions(
            args=self.args,
            env=self.env,
            cwd=self.cwd,
            terminal=self.terminal,
            rows=rows,
            columns=columns,
        )


def new_id() -> str:
    return secrets.token_hex(8)


async def ensure_sandbox(session: Session, target: Target, state_file: StateFile) -> str:
    # The lock is held across CreateSandbox so two concurrent `run`s create one sandbox.
    with state_file.update() as state:
        if state.sandbox_id is None:
            sandbox_id = new_id()
            request = agent_pb2.CreateSandboxRequest(
                hostname=HOSTNAME,
                sandbox_id=sandbox_id,
                storages=[SHARED_STORAGE] if target.virtio_fs else [],
            )
            try:
                await session.agent_empty("CreateSandbox", request)
            except AlreadyExists:
                pass  # somebody else's sandbox: its network is theirs
            else:
                if target.net is not None:
                    # As Kata's runtime does before the first container: the NIC, then routes.
                    await configure_guest_network(session, target.net)
            state.sandbox_id = sandbox_id
        return state.sandbox_id


async def run_container(
    session: Session,
    target: Target,
    state_file: StateFile,
    rootfs: Path,
    process: ProcessRequest,
    container_id: str | None,
    volumes: Sequence[Volume] = (),
) -> int:
    cid = container_id or new_id()
    usage_check(list(volumes), target.qmp_socket)
    await ensure_sandbox(session, target, state_file)
    with state_file.update() as state:
        if cid in state.containers:
            raise UsageError(f"container {cid} already exists")
        root_path, mount = share_rootfs(target, cid, rootfs)
        state.containers[cid] = ContainerRecord(
            id=cid,
            rootfs=str(rootfs),
            args=process.args,
            created=time.time(),
            owner_pid=os.getpid(),
            mount=str(mount),
        )
    created = False
    # Hot-plugged disks (`--volume`): unplugged once the container is gone.
    disks = Volumes(target.qmp_socket, cid) if volumes and target.qmp_socket else None
    try:
        spec = build_spec(process.options(), root_path, HOSTNAME)
        if disks is not None:
            await disks.attach(list(volumes))
            spec.Mounts.extend(item.mount for item in disks.attached)
        await session.agent_empty(
            "CreateContainer",
            agent_pb2.CreateContainerRequest(
                container_id=cid,
                exec_id=cid,
                OCI=spec,
                storages=[item.storage for item in disks.attached] if disks else [],
            ),
        )
        created = True
        await session.agent_empty(
            "StartContainer", agent_pb2.StartContainerRequest(container_id=cid)
        )
        with state_file.update() as state:
            state.containers[cid].started = True
        io = ProcessIO(session, cid, cid, terminal=process.terminal, stdin=process.stdin)
        code = await io.run()
    except BaseException:
        # The first failure is the one to report: cleaning up after it is best effort. A
        # container the agent refused to create may be somebody else's: leave it alone.
        with contextlib.suppress(TtrpcError, CtlError):
            if created:
                await remove_container(session, state_file, cid)
            else:
                forget_container(state_file, cid)
        with contextlib.suppress(VolumeError):
            if disks is not None:
                await disks.detach()
        raise
    await remove_container(session, state_file, cid)
    if disks is not None:
        try:
            await disks.detach()
        except VolumeError as exc:
            raise VolumeError(f"container exited with {code}, then unplugging: {exc}") from None
    return code


async def remove_container(session: Session, state_file: StateFile, container_id: str) -> None:
    """RemoveContainer (gone already is fine), undo the rootfs share, forget the record."""
    with contextlib.suppress(NotFound):
        await session.agent_empty(
            "RemoveContainer", agent_pb2.RemoveContainerRequest(container_id=container_id)
        )
    forget_container(state_file, container_id)


def forget_container(state_file: StateFile, container_id: str) -> None:
    """Undo the container's rootfs share and drop its record."""
    with state_file.update() as state:
        record = state.containers.pop(container_id, None)
        if record is not None:
            unshare_rootfs(Path(record.mount))


async def exec_process(session: Session, container_id: str, process: ProcessRequest) -> int:
    exec_id = new_id()
    await session.agent_empty(
        "ExecProcess",
        agent_pb2.ExecProcessRequest(
            container_id=container_id, exec_id=exec_id, process=build_process(process.options())
        ),
    )
    io = ProcessIO(session, container_id, exec_id, terminal=process.terminal, stdin=process.stdin)
    return await io.run()
