"""A Kubernetes pod as containerd's CRI and the Kata runtime send it, against the real agent
as PID 1 in fresh PID, mount, network, UTS and IPC namespaces (the network namespace is the
"guest's", so the net.* sysctls written here never touch the host's).

The pause container carries CRI's two net.* sysctls and an AppArmor profile; the app
container shares its pid namespace (shareProcessNamespace), runs as a user given by name, and
the sandbox has guest hooks that write a file.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest
from agent_pod import SHARED, share_in
from pid1_wrapper import host_cgroup_state, pid1_wrapper

from pykata.agent.rpc.convert.oci import from_dict
from pykata.protocols import agent_pb2, oci_pb2
from pykata.ttrpc.errors import InvalidArgument

pytestmark = pytest.mark.root

CRI_NAME = "io.kubernetes.cri.container-name"
TERMINATION_LOG = "/dev/termination-log"
CRI_SYSCTLS = {"net.ipv4.ip_unprivileged_port_start": "0", "net.ipv4.ping_group_range": "0 1"}
RPC_TIMEOUT = 60


@pytest.fixture(scope="module")
def agent_address(work_dir: Path) -> str:
    return f"unix://{work_dir}/agent.sock"


@pytest.fixture(scope="module")
def host_cgroups_before() -> tuple[Any, Any]:
    return host_cgroup_state()


@pytest.fixture(scope="module")
def agent_wrapper(host_cgroups_before: tuple[Any, Any]) -> list[str]:
    # Its own cgroup mounts: the host's /sys/fs/cgroup is the whole machine's.
    return pid1_wrapper("v2")


@pytest.fixture(scope="module")
def agent_args(work_dir: Path) -> list[str]:
    # As PID 1 the agent would read this host's kernel command line; a config file replaces it.
    config = work_dir / "agent.toml"
    config.write_text("unified_cgroup_hierarchy = true\n")
    return ["--config", str(config)]


@pytest.fixture(scope="module")
def init_pid(agent_process: subprocess.Popen[bytes]) -> int:
    with open(f"/proc/{agent_process.pid}/task/{agent_process.pid}/children") as f:
        (pid,) = f.read().split()
    return int(pid)


@pytest.fixture(scope="module")
def hooks_dir(work_dir: Path) -> Path:
    hooks = work_dir / "hooks"
    for kind in ("prestart", "poststart", "poststop"):
        hook = hooks / kind / "record"
        hook.parent.mkdir(parents=True)
        # The kind, then the container's id from the state on stdin.
        record = f'echo "$1 $(sed -n \'s/.*"id": *"\\([^"]*\\)".*/\\1/p\')" >> {work_dir}/hooks.out'
        hook.write_text(f"#!/bin/sh\n{record}\n")
        hook.chmod(0o755)
    return hooks


@pytest.fixture(scope="module")
def rootfs(busybox_rootfs: Path) -> Path:
    with (busybox_rootfs / "etc" / "passwd").open("a") as f:
        f.write("app:x:1234:1234:app:/:/bin/sh\n")
    with (busybox_rootfs / "etc" / "group").open("a") as f:
        f.write("app:x:1234:\nextra:x:2345:app\n")
    return busybox_rootfs


def host_sysctls() -> list[str]:
    values = []
    for name in CRI_SYSCTLS:
        with open("/proc/sys/" + name.replace(".", "/")) as f:
            values.append(f.read())
    return values


@pytest.fixture(scope="module")
def host_before() -> list[str]:
    return host_sysctls()


def spec(cid: str, args: list[str], **extra: Any) -> oci_pb2.Spec:
    process = extra.pop("process", {})
    linux = extra.pop("linux", {})
    data = {
        "ociVersion": "1.0.2",
        "process": {"args": args, "env": ["PATH=/bin"], "cwd": "/", **process},
        "root": {"path": f"{SHARED}/{cid}/rootfs"},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]},
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
            "cgroupsPath": f"/pykata-pod/{cid}",
            **linux,
        },
        **extra,
    }
    return from_dict(data, oci_pb2.Spec())


async def run(agent: Any, cid: str, eid: str, args: list[str]) -> tuple[int, bytes]:
    await agent.ExecProcess(
        agent_pb2.ExecProcessRequest(
            container_id=cid, exec_id=eid, process=oci_pb2.Process(Args=args, Cwd="/")
        ),
        timeout=RPC_TIMEOUT,
    )
    out = b""
    while True:
        resp = await agent.ReadStdout(
            agent_pb2.ReadStreamRequest(container_id=cid, exec_id=eid, len=65536),
            timeout=RPC_TIMEOUT,
        )
        if not resp.data:
            break
        out += resp.data
    status = await agent.WaitProcess(
        agent_pb2.WaitProcessRequest(container_id=cid, exec_id=eid), timeout=RPC_TIMEOUT
    )
    return status.status, out


async def create_and_start(agent: Any, request: agent_pb2.CreateContainerRequest) -> None:
    await agent.CreateContainer(request, timeout=RPC_TIMEOUT)
    await agent.StartContainer(
        agent_pb2.StartContainerRequest(container_id=request.container_id), timeout=RPC_TIMEOUT
    )


async def test_create_sandbox_with_guest_hooks(agent: Any, hooks_dir: Path) -> None:
    await agent.CreateSandbox(
        agent_pb2.CreateSandboxRequest(
            hostname="pod", sandbox_id="pod", sandbox_pidns=True, guest_hook_path=str(hooks_dir)
        ),
        timeout=RPC_TIMEOUT,
    )


async def test_pause_with_cri_sysctls_and_apparmor_runs(
    agent: Any, init_pid: int, rootfs: Path, work_dir: Path, host_before: list[str]
) -> None:
    share_in(init_pid, rootfs, "pause")
    pause = spec(
        "pause",
        ["sleep", "3600"],
        process={"apparmorProfile": "cri-containerd.apparmor.d"},
        linux={"sysctl": CRI_SYSCTLS},
    )
    await create_and_start(
        agent, agent_pb2.CreateContainerRequest(container_id="pause", exec_id="pause", OCI=pause)
    )
    # The values are the guest's (the pod's) network namespace's, seen from inside the pod.
    code, out = await run(
        agent,
        "pause",
        "sysctls",
        [
            "cat",
            "/proc/sys/net/ipv4/ping_group_range",
            "/proc/sys/net/ipv4/ip_unprivileged_port_start",
        ],
    )
    assert code == 0
    assert out.split() == [b"0", b"1", b"0"]
    # ... and from the agent's namespace; the host's stays as it was.
    seen = await asyncio.to_thread(
        subprocess.run,
        ["nsenter", "-t", str(init_pid), "-n", "cat", "/proc/sys/net/ipv4/ping_group_range"],
        capture_output=True,
        check=True,
    )
    assert seen.stdout.split() == [b"0", b"1"]
    assert host_sysctls() == host_before
    assert (work_dir / "hooks.out").exists()


async def test_app_shares_the_pause_pid_namespace_as_a_named_user(
    agent: Any, init_pid: int, rootfs: Path
) -> None:
    share_in(init_pid, rootfs, "app")
    await create_and_start(
        agent,
        agent_pb2.CreateContainerRequest(
            container_id="app",
            exec_id="app",
            OCI=spec("app", ["sleep", "3600"]),
            sandbox_pidns=True,
            string_user=agent_pb2.StringUser(uid="app"),
        ),
    )
    # The pause process is PID 1 of the shared namespace, as with shareProcessNamespace.
    code, out = await run(agent, "app", "pid1", ["cat", "/proc/1/cmdline"])
    assert code == 0 and out.split(b"\0")[:2] == [b"sleep", b"3600"]
    # The app's init runs as the user named, resolved in the container's /etc/passwd and
    # /etc/group (its extra group included).
    script = "grep -l '^Uid:.*1234' /proc/[0-9]*/status | xargs grep -hE '^(Uid|Gid|Groups):'"
    code, out = await run(agent, "app", "ids", ["sh", "-c", script])
    assert code == 0
    lines = [line.split() for line in out.decode().splitlines()]
    assert ["Uid:", "1234", "1234", "1234", "1234"] in lines
    assert ["Gid:", "1234", "1234", "1234", "1234"] in lines
    assert ["Groups:", "2345"] in lines


async def test_exec_as_a_named_user(agent: Any) -> None:
    await agent.ExecProcess(
        agent_pb2.ExecProcessRequest(
            container_id="app",
            exec_id="as-app",
            string_user=agent_pb2.StringUser(uid="app", additionalGids=["extra"]),
            process=oci_pb2.Process(Args=["id"], Cwd="/"),
        ),
        timeout=RPC_TIMEOUT,
    )
    resp = await agent.ReadStdout(
        agent_pb2.ReadStreamRequest(container_id="app", exec_id="as-app", len=4096),
        timeout=RPC_TIMEOUT,
    )
    assert resp.data.startswith(b"uid=1234(app) gid=1234(app)")


async def test_unknown_user_is_refused(agent: Any, init_pid: int, rootfs: Path) -> None:
    share_in(init_pid, rootfs, "bad")
    with pytest.raises(InvalidArgument, match="user 'ghost' not found"):
        await agent.CreateContainer(
            agent_pb2.CreateContainerRequest(
                container_id="bad",
                OCI=spec("bad", ["true"]),
                string_user=agent_pb2.StringUser(uid="ghost"),
            ),
            timeout=RPC_TIMEOUT,
        )


async def output_and_status(agent: Any, cid: str) -> tuple[int, bytes]:
    """All the stdout of container ``cid``'s process, and its exit status."""
    out = b""
    while True:
        resp = await agent.ReadStdout(
            agent_pb2.ReadStreamRequest(container_id=cid, exec_id=cid, len=65536),
            timeout=RPC_TIMEOUT,
        )
        if not resp.data:
            break
        out += resp.data
    status = await agent.WaitProcess(
        agent_pb2.WaitProcessRequest(container_id=cid, exec_id=cid), timeout=RPC_TIMEOUT
    )
    return status.status, out


def named(cid: str, args: list[str], name: str, *mounts: dict[str, Any]) -> oci_pb2.Spec:
    """A container spec as CRI makes it: its name in the pod as an annotation."""
    base = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]},
    ]
    return spec(cid, args, mounts=[*base, *mounts], annotations={CRI_NAME: name})


SINK = "cat /from-src/note && echo back > /from-src/reply"


async def test_shared_mount_from_another_container(agent: Any, init_pid: int, rootfs: Path) -> None:
    share_in(init_pid, rootfs, "source")
    exchange = {"destination": "/exchange", "type": "tmpfs", "source": "tmpfs"}
    await create_and_start(
        agent,
        agent_pb2.CreateContainerRequest(
            container_id="source",
            exec_id="source",
            OCI=named("source", ["sleep", "3600"], "src", exchange),
        ),
    )
    code, _ = await run(agent, "source", "write", ["sh", "-c", "echo from-source > /exchange/note"])
    assert code == 0
    share_in(init_pid, rootfs, "sink")
    await create_and_start(
        agent,
        agent_pb2.CreateContainerRequest(
            container_id="sink",
            exec_id="sink",
            OCI=named(
                "sink", ["sh", "-c", "cat /from-src/note && echo back > /from-src/reply"], "dst"
            ),
            shared_mounts=[
                agent_pb2.SharedMount(
                    name="exchange",
                    src_ctr="src",
                    src_path="/exchange",
                    dst_ctr="dst",
                    dst_path="/from-src",
                )
            ],
        ),
    )
    assert await output_and_status(agent, "sink") == (0, b"from-source\n")
    # The same mount, not a copy: what the sink wrote, the source reads.
    assert await run(agent, "source", "read", ["cat", "/exchange/reply"]) == (0, b"back\n")
    # Nothing of it in the guest's own mount namespace.
    mountinfo = Path(f"/proc/{init_pid}/mountinfo").read_text()  # noqa: ASYNC240
    assert "/from-src" not in mountinfo


async def test_shared_mount_through_a_symlink_is_refused_and_undone(
    agent: Any, init_pid: int, rootfs: Path
) -> None:
    (rootfs / "leads-out").symlink_to("/etc")
    share_in(init_pid, rootfs, "linked")
    request = agent_pb2.CreateContainerRequest(
        container_id="linked",
        exec_id="linked",
        OCI=named("linked", ["true"], "linked"),
        shared_mounts=[
            agent_pb2.SharedMount(
                name="x", src_ctr="src", src_path="/exchange", dst_path="/leads-out/x"
            )
        ],
    )
    with pytest.raises(InvalidArgument, match=r"shared_mounts\[0\].dst_path: .* symlink"):
        await agent.CreateContainer(request, timeout=RPC_TIMEOUT)
    assert not Path(f"/proc/{init_pid}/root/etc/x").is_symlink()  # noqa: ASYNC240
    assert not Path(f"/proc/{init_pid}/root/etc/x").exists()  # noqa: ASYNC240
    # The failed creation was undone: the id is free again.
    del request.shared_mounts[:]
    await create_and_start(agent, request)
    assert await output_and_status(agent, "linked") == (0, b"")


async def test_shared_mount_from_a_missing_container_is_left_out(
    agent: Any, init_pid: int, rootfs: Path
) -> None:
    share_in(init_pid, rootfs, "lonely")
    await create_and_start(
        agent,
        agent_pb2.CreateContainerRequest(
            container_id="lonely",
            exec_id="lonely",
            OCI=named("lonely", ["sh", "-c", "test ! -e /never-made"], "lonely"),
            shared_mounts=[
                agent_pb2.SharedMount(
                    name="x", src_ctr="nobody", src_path="/exchange", dst_path="/never-made"
                )
            ],
        ),
    )
    assert await output_and_status(agent, "lonely") == (0, b"")


async def test_termination_message(agent: Any, init_pid: int, rootfs: Path) -> None:
    # CRI's termination log: a file of the shared folder bind-mounted at the path annotated.
    source = f"{SHARED}/told-termination-log"
    script = f"mkdir -p {SHARED} && : > {source}"
    command = ["nsenter", "-t", str(init_pid), "-m", "sh", "-c", script]
    await asyncio.to_thread(subprocess.run, command, check=True)
    share_in(init_pid, rootfs, "told")
    log = {"destination": TERMINATION_LOG, "source": source, "type": "bind", "options": ["rbind"]}
    told = named("told", ["sh", "-c", f"echo 'no config' > {TERMINATION_LOG}; exit 2"], "told", log)
    told.Annotations["io.kubernetes.container.terminationMessagePath"] = TERMINATION_LOG
    await create_and_start(
        agent, agent_pb2.CreateContainerRequest(container_id="told", exec_id="told", OCI=told)
    )
    assert await output_and_status(agent, "told") == (2, b"")
    request = agent_pb2.GetDiagnosticDataRequest(log_type="termination_log", container_id="told")
    reply = await agent.GetDiagnosticData(request, timeout=RPC_TIMEOUT)
    assert reply.data == "no config\n"
    request.log_type = "kernel"
    with pytest.raises(InvalidArgument, match="unsupported diagnostic log_type: 'kernel'"):
        await agent.GetDiagnosticData(request, timeout=RPC_TIMEOUT)


async def test_destroy_sandbox(
    agent: Any, agent_process: subprocess.Popen[bytes], work_dir: Path
) -> None:
    await agent.DestroySandbox(agent_pb2.DestroySandboxRequest(), timeout=RPC_TIMEOUT)
    agent_process.wait(timeout=15)
    # Run as the Rust agent runs them: argv is the hook's name, then its kind.
    runs = [line.split() for line in (work_dir / "hooks.out").read_text().splitlines()]
    assert {kind for kind, _ in runs} == {"poststart", "poststop", "prestart"}
    # Once per container made; "linked" twice: the creation refused for its shared mount had
    # run its hooks before it was undone.
    started = ["pause", "app", "source", "sink", "linked", "linked", "lonely", "told"]
    assert sorted(cid for kind, cid in runs if kind == "poststart") == sorted(started)
    assert set(started) <= {cid for kind, cid in runs if kind == "poststop"}
