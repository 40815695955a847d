"""Containers through the real agent: lifecycle, process I/O, signals, stats, OOM, cleanup.

The agent runs as a root process on this host and drives runc (or crun where it works) with
busybox containers. The host-shared rootfs of each container is simulated the way
virtio-fs presents it: at /run/kata-containers/shared/containers/<cid>/rootfs.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import secrets
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pykata.agent.mount import mount_points
from pykata.agent.rpc.convert.oci import from_dict
from pykata.protocols import agent_pb2, oci_pb2
from pykata.ttrpc import Client
from pykata.ttrpc.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)

pytestmark = pytest.mark.root

SHARED = "/run/kata-containers/shared/containers"
# Kata's paths are host-wide here: ids unique to this run keep concurrent runs apart.
RUN = secrets.token_hex(3)
CGROUP_PREFIX = f"pykata-it-{RUN}"
MiB = 1 << 20


def container_spec(cid: str, args: list[str], **resources: Any) -> oci_pb2.Spec:
    spec = {
        "ociVersion": "1.0.2",
        "process": {"args": args, "env": ["PATH=/bin", "HOME=/"], "cwd": "/"},
        "root": {"path": f"{SHARED}/{cid}/rootfs"},
        "hostname": "it",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]},
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            },
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
            "cgroupsPath": f"/{CGROUP_PREFIX}-{cid}",
            "resources": resources,
        },
    }
    return from_dict(spec, oci_pb2.Spec())


def process_spec(args: list[str], *, terminal: bool = False) -> oci_pb2.Process:
    return oci_pb2.Process(Args=args, Env=["PATH=/bin"], Cwd="/", Terminal=terminal)


@pytest.fixture(scope="module")
def sandbox(agent_address: str, agent_process: subprocess.Popen[bytes]) -> set[str]:
    """Creates the sandbox; returns the agent's open fds right after, as the leak baseline."""

    async def create() -> None:
        async with await Client.connect(agent_address) as client:
            stub = client.stub(agent_pb2.DESCRIPTOR.services_by_name["AgentService"])
            await stub.CreateSandbox(
                agent_pb2.CreateSandboxRequest(hostname="it", sandbox_id="it-sandbox"), timeout=30
            )

    asyncio.run(create())
    return agent_fds(agent_process)


async def read_all(agent: Any, cid: str, eid: str, *, stderr: bool = False) -> bytes:
    read = agent.ReadStderr if stderr else agent.ReadStdout
    chunks: list[bytes] = []
    while True:
        resp = await read(
            agent_pb2.ReadStreamRequest(container_id=cid, exec_id=eid, len=64 * 1024), timeout=60
        )
        if not resp.data:
            return b"".join(chunks)
        chunks.append(resp.data)


async def wait(agent: Any, cid: str, eid: str) -> int:
    resp = await agent.WaitProcess(
        agent_pb2.WaitProcessRequest(container_id=cid, exec_id=eid), timeout=60
    )
    status: int = resp.status
    return status


async def run_container(
    agent: Any, share: Callable[[str], None], cid: str, args: list[str], **resources: Any
) -> None:
    share(cid)
    await agent.CreateContainer(
        agent_pb2.CreateContainerRequest(
            container_id=cid, exec_id=cid, OCI=container_spec(cid, args, **resources)
        ),
        timeout=60,
    )
    await agent.StartContainer(agent_pb2.StartContainerRequest(container_id=cid), timeout=60)


async def exec_in(agent: Any, cid: str, eid: str, args: list[str], *, tty: bool = False) -> None:
    await agent.ExecProcess(
        agent_pb2.ExecProcessRequest(
            container_id=cid, exec_id=eid, process=process_spec(args, terminal=tty)
        ),
        timeout=60,
    )


async def remove(agent: Any, cid: str) -> None:
    await agent.RemoveContainer(
        agent_pb2.RemoveContainerRequest(container_id=cid, timeout=30), timeout=60
    )


def cgroup_dirs(name: str) -> list[Path]:
    root = Path("/sys/fs/cgroup")
    return [d for d in [root / name, *(c / name for c in root.iterdir())] if d.is_dir()]


def leftovers(cid: str) -> list[Path]:
    """The container's bundle and cgroup directories that still exist."""
    bundle = Path(f"/run/kata-containers/{cid}")
    return [bundle] * bundle.exists() + cgroup_dirs(f"{CGROUP_PREFIX}-{cid}")


def agent_fds(agent_process: subprocess.Popen[bytes]) -> set[str]:
    """What the agent's fds point to, sockets aside (each client connection has its own)."""
    targets = set()
    for fd in os.listdir(f"/proc/{agent_process.pid}/fd"):
        try:
            target = os.readlink(f"/proc/{agent_process.pid}/fd/{fd}")
        except FileNotFoundError:  # closed while we looked
            continue
        if not target.startswith("socket:"):
            targets.add(target)
    return targets


def zombies_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError as exc:
            assert exc.errno in (errno.ENOENT, errno.ESRCH)
            continue
        if fields[0] == "Z" and int(fields[1]) == pid:
            found.append(int(entry))
    return found


async def test_lifecycle_io_signals_stats(
    sandbox: set[str], agent: Any, shared_rootfs: Callable[[str], None]
) -> None:
    cid = f"lifecycle-{RUN}"
    init = ["sh", "-c", 'echo ready; while read l; do echo "got $l"; done; exit 3']
    await run_container(agent, shared_rootfs, cid, init)
    assert (
        await agent.ReadStdout(agent_pb2.ReadStreamRequest(container_id=cid, exec_id=cid, len=64))
    ).data == b"ready\n"

    # stdin round trip
    written = await agent.WriteStdin(
        agent_pb2.WriteStreamRequest(container_id=cid, exec_id=cid, data=b"ping\n")
    )
    assert written.len == 5
    assert (
        await agent.ReadStdout(agent_pb2.ReadStreamRequest(container_id=cid, exec_id=cid, len=64))
    ).data == b"got ping\n"

    # exec without a tty: separate stdout and stderr, exit 0
    await exec_in(agent, cid, "plain", ["sh", "-c", "echo out; echo err >&2; hostname"])
    assert await read_all(agent, cid, "plain") == b"out\nit\n"
    assert await read_all(agent, cid, "plain", stderr=True) == b"err\n"
    assert await wait(agent, cid, "plain") == 0
    with pytest.raises(NotFound):
        await wait(agent, cid, "plain")  # WaitProcess forgot it

    # exec with a tty: merged output with CRLF, window size applies
    await exec_in(agent, cid, "tty", ["sh", "-c", "read x; stty size; echo oops >&2"], tty=True)
    await agent.TtyWinResize(
        agent_pb2.TtyWinResizeRequest(container_id=cid, exec_id="tty", row=33, column=111)
    )
    await agent.WriteStdin(
        agent_pb2.WriteStreamRequest(container_id=cid, exec_id="tty", data=b"\n")
    )
    out = await read_all(agent, cid, "tty")
    assert out.endswith(b"33 111\r\noops\r\n"), out
    assert await read_all(agent, cid, "tty", stderr=True) == b""
    assert await wait(agent, cid, "tty") == 0
    with pytest.raises(Exception, match="no tty"):
        await agent.TtyWinResize(
            agent_pb2.TtyWinResizeRequest(container_id=cid, exec_id=cid, row=1, column=1)
        )

    # signals: SIGTERM and SIGKILL deaths of exec'd processes; every waiter is woken
    for eid, sig, code in (("term", signal.SIGTERM, 143), ("kill", signal.SIGKILL, 137)):
        await exec_in(agent, cid, eid, ["sleep", "1000"])
        with pytest.raises(AlreadyExists):
            await exec_in(agent, cid, eid, ["true"])
        waiters = [asyncio.ensure_future(wait(agent, cid, eid)) for _ in range(3)]
        await agent.SignalProcess(
            agent_pb2.SignalProcessRequest(container_id=cid, exec_id=eid, signal=sig)
        )
        assert await asyncio.gather(*waiters) == [code] * 3

    # stats
    stats = await agent.StatsContainer(agent_pb2.StatsContainerRequest(container_id=cid))
    assert stats.cgroup_stats.memory_stats.usage.usage > 0
    assert stats.cgroup_stats.cpu_stats.cpu_usage.total_usage > 0
    assert stats.cgroup_stats.pids_stats.current >= 1
    assert "lo" in [n.name for n in stats.network_stats]

    # pause / resume
    await agent.PauseContainer(agent_pb2.PauseContainerRequest(container_id=cid))
    with pytest.raises(FailedPrecondition):
        await exec_in(agent, cid, "while-paused", ["true"])
    with pytest.raises(FailedPrecondition):
        await agent.PauseContainer(agent_pb2.PauseContainerRequest(container_id=cid))
    await agent.ResumeContainer(agent_pb2.ResumeContainerRequest(container_id=cid))
    await agent.WriteStdin(agent_pb2.WriteStreamRequest(container_id=cid, exec_id=cid, data=b"x\n"))
    assert (
        await agent.ReadStdout(agent_pb2.ReadStreamRequest(container_id=cid, exec_id=cid, len=64))
    ).data == b"got x\n"

    # update: a memory limit
    await agent.UpdateContainer(
        agent_pb2.UpdateContainerRequest(
            container_id=cid,
            resources=oci_pb2.LinuxResources(Memory=oci_pb2.LinuxMemory(Limit=64 * MiB)),
        )
    )
    stats = await agent.StatsContainer(agent_pb2.StatsContainerRequest(container_id=cid))
    assert stats.cgroup_stats.memory_stats.usage.limit == 64 * MiB

    # closing stdin ends the init's loop: exit 3, and its output before exit is all there
    await agent.CloseStdin(agent_pb2.CloseStdinRequest(container_id=cid, exec_id=cid))
    assert await wait(agent, cid, cid) == 3
    with pytest.raises(FailedPrecondition):
        await exec_in(agent, cid, "after-exit", ["true"])
    await remove(agent, cid)
    assert leftovers(cid) == []


async def test_init_sigterm_without_handler_is_a_kill(
    sandbox: set[str], agent: Any, shared_rootfs: Callable[[str], None]
) -> None:
    cid = f"sigterm-{RUN}"
    await run_container(agent, shared_rootfs, cid, ["sleep", "1000"])
    await agent.SignalProcess(
        agent_pb2.SignalProcessRequest(container_id=cid, exec_id="", signal=signal.SIGTERM)
    )
    assert await wait(agent, cid, cid) == 137
    await remove(agent, cid)


async def test_init_with_a_terminal(
    sandbox: set[str], agent: Any, shared_rootfs: Callable[[str], None]
) -> None:
    cid = f"tty-init-{RUN}"
    shared_rootfs(cid)
    spec = container_spec(cid, ["sh", "-c", 'read x; echo "$x on $(tty)"; exit 2'])
    spec.Process.Terminal = True
    await agent.CreateContainer(
        agent_pb2.CreateContainerRequest(container_id=cid, exec_id=cid, OCI=spec), timeout=60
    )
    await agent.StartContainer(agent_pb2.StartContainerRequest(container_id=cid), timeout=60)
    await agent.WriteStdin(
        agent_pb2.WriteStreamRequest(container_id=cid, exec_id=cid, data=b"hi\n")
    )
    # The pty echoes the input, then the answer; CRLF line ends.
    assert await read_all(agent, cid, cid) == b"hi\r\nhi on /dev/pts/0\r\n"
    assert await wait(agent, cid, cid) == 2
    await remove(agent, cid)
    assert leftovers(cid) == []


async def test_signal_all_kills_every_process(
    sandbox: set[str], agent: Any, shared_rootfs: Callable[[str], None]
) -> None:
    cid = f"killall-{RUN}"
    await run_container(agent, shared_rootfs, cid, ["sh", "-c", "sleep 1000 & sleep 1000"])
    await exec_in(agent, cid, "other", ["sleep", "1000"])
    await agent.SignalProcess(
        agent_pb2.SignalProcessRequest(container_id=cid, exec_id="", signal=signal.SIGKILL)
    )
    assert await wait(agent, cid, "other") == 137
    assert await wait(agent, cid, cid) == 137
    # Once gone, signalling again is not an error (ESRCH as Kata handles it).
    await agent.SignalProcess(
        agent_pb2.SignalProcessRequest(container_id=cid, exec_id="", signal=signal.SIGKILL)
    )
    await remove(agent, cid)


async def test_oom_kill_produces_one_event(
    sandbox: set[str], agent: Any, shared_rootfs: Callable[[str], None]
) -> None:
    cid = f"oom-{RUN}"
    limit = {"memory": {"limit": 32 * MiB, "swap": 32 * MiB}}
    await run_container(agent, shared_rootfs, cid, ["sleep", "1000"], **limit)
    event = asyncio.ensure_future(agent.GetOOMEvent(agent_pb2.GetOOMEventRequest(), timeout=60))
    # dd's 128 MiB block buffer cannot fit in 32 MiB.
    await exec_in(agent, cid, "hog", ["dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"])
    assert await wait(agent, cid, "hog") == 137
    assert (await event).container_id == cid
    await remove(agent, cid)


async def test_hundred_concurrent_execs_lose_nothing(
    sandbox: set[str], agent: Any, shared_rootfs: Callable[[str], None]
) -> None:
    cid = f"many-{RUN}"
    await run_container(agent, shared_rootfs, cid, ["sleep", "1000"])

    async def one(i: int) -> tuple[str, int, str]:
        eid = f"e{i}"
        await exec_in(agent, cid, eid, ["sh", "-c", f"yes {eid} | head -c {MiB}; exit {i % 5}"])
        out, code = await asyncio.gather(read_all(agent, cid, eid), wait(agent, cid, eid))
        return eid, code, hashlib.sha256(out).hexdigest()

    results = await asyncio.gather(*(one(i) for i in range(100)))
    for i, (eid, code, digest) in enumerate(results):
        expected = ((eid + "\n").encode() * MiB)[:MiB]
        assert digest == hashlib.sha256(expected).hexdigest(), eid
        assert code == i % 5
    await remove(agent, cid)


async def test_invalid_requests(
    sandbox: set[str], agent: Any, shared_rootfs: Callable[[str], None]
) -> None:
    with pytest.raises(NotFound):
        await agent.StartContainer(agent_pb2.StartContainerRequest(container_id="nope"))
    with pytest.raises(NotFound):
        await agent.StatsContainer(agent_pb2.StatsContainerRequest(container_id="nope"))
    with pytest.raises(InvalidArgument):
        await agent.CreateContainer(
            agent_pb2.CreateContainerRequest(container_id="../x", OCI=container_spec("x", ["true"]))
        )
    spec = container_spec("escape", ["true"])
    spec.Root.Path = "/run/kata-containers/../../etc"
    with pytest.raises(InvalidArgument):
        await agent.CreateContainer(
            agent_pb2.CreateContainerRequest(container_id="escape", OCI=spec)
        )
    cid = f"dup-{RUN}"
    await run_container(agent, shared_rootfs, cid, ["sleep", "1000"])
    with pytest.raises(AlreadyExists):
        await agent.CreateContainer(
            agent_pb2.CreateContainerRequest(
                container_id=cid, OCI=container_spec(cid, ["sleep", "1000"])
            )
        )
    with pytest.raises(FailedPrecondition):
        await agent.StartContainer(agent_pb2.StartContainerRequest(container_id=cid))
    with pytest.raises(NotFound):
        await wait(agent, cid, "no-such-exec")
    with pytest.raises(InvalidArgument):
        await agent.SignalProcess(
            agent_pb2.SignalProcessRequest(container_id=cid, exec_id=cid, signal=999)
        )


async def test_root_through_a_symlink_is_refused(sandbox: set[str], agent: Any) -> None:
    cid = f"symlink-{RUN}"
    link = Path(SHARED) / cid
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to("/")
    try:
        spec = container_spec(cid, ["true"])
        spec.Root.Path = f"{link}/usr"
        with pytest.raises(InvalidArgument, match="symlink"):
            await agent.CreateContainer(
                agent_pb2.CreateContainerRequest(container_id=cid, OCI=spec)
            )
        assert leftovers(cid) == []
    finally:
        link.unlink()


async def test_no_leaks_after_remove_and_destroy(
    sandbox: set[str],
    agent: Any,
    agent_process: subprocess.Popen[bytes],
    shared_rootfs: Callable[[str], None],
) -> None:
    # Every container removed: the agent holds no pipe, pty, eventfd or inotify fd more than
    # right after CreateSandbox, and has no unreaped children.
    await remove(agent, f"dup-{RUN}")
    assert agent_fds(agent_process) <= sandbox
    assert zombies_of(agent_process.pid) == []
    # DestroySandbox takes down a container that still runs, with an exec in it.
    cid = f"last-{RUN}"
    await run_container(agent, shared_rootfs, cid, ["sleep", "1000"])
    await exec_in(agent, cid, "left-running", ["sleep", "1000"])
    await agent.DestroySandbox(agent_pb2.DestroySandboxRequest(), timeout=60)
    leftover = [p for p, _ in mount_points() if RUN in p and not p.startswith(SHARED)]
    assert leftover == []  # the test's own shares aside
    assert [d for d in all_cgroup_dirs() if d.name.startswith(CGROUP_PREFIX)] == []
    assert leftovers(cid) == []


def all_cgroup_dirs() -> list[Path]:
    root = Path("/sys/fs/cgroup")
    tops = [d for d in root.iterdir() if d.is_dir()]
    return tops + [d for c in tops for d in c.iterdir() if d.is_dir()]
