"""Soak benchmark: N container lifecycles and M execs through the agent, then what leaked.

Usage: bench_soak.py [--lifecycles N] [--execs M] [--no-peer]   (as root: the agent runs runc)

The real agent runs as a root process under ``unshare --mount --propagation private --net``
with a fresh tmpfs on /run/kata-containers, a busybox rootfs (pykata.host.rootfs)
bind-mounted where virtio-fs would put it. After CreateSandbox and one warm-up lifecycle the
agent's state is counted; then
- N lifecycles: CreateContainer (``sh -c 'echo soak-<i>'``), StartContainer, ReadStdout to
  EOF (the output is checked), WaitProcess, RemoveContainer;
- M execs in one long-running container: ExecProcess (``echo``), ReadStdout to EOF,
  WaitProcess; the container is removed at the end;
and counted again. Leaks are the differences: mounts below /run/kata-containers in the
agent's /proc/<pid>/mountinfo, the agent's open fds, its children in Z state, its threads,
cgroups left below the soak's own /kata/<prefix> in every hierarchy (the containers'
cgroupsPath is /<prefix>/<cid>, so other agents on the host do not count); RSS before/after.
Peer: the same lifecycles with the OCI runtime directly (``runc run`` reading stdout, then
``runc delete``) and the same execs (``runc exec``), rates and ratios agent/direct.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pykata.agent.rpc.convert.oci import from_dict
from pykata.host.rootfs import make_busybox_rootfs
from pykata.protocols import agent_pb2, health_pb2, oci_pb2
from pykata.ttrpc import Client

AGENT_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
KATA = "/run/kata-containers"
ROOTFS = f"{KATA}/shared/containers/soak/rootfs"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def spec(root: str, args: list[str], cgroup: str) -> dict[str, Any]:
    return {
        "ociVersion": "1.0.2",
        "process": {"args": args, "env": ["PATH=/bin"], "cwd": "/"},
        "root": {"path": root},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")],
            "cgroupsPath": cgroup,
        },
    }


# --- counting -------------------------------------------------------------------------


def proc_status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


def mounts_below(pid: int, root: str) -> list[str]:
    points = []
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if point == root or point.startswith(root + "/"):
            points.append(point)
    return points


def zombie_children(pid: int) -> list[int]:
    zombies = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z" and int(fields[1]) == pid:
            zombies.append(int(entry))
    return zombies


def cgroups_below(prefix: str) -> list[str]:
    """Cgroup directories at or below /kata/<prefix> in every hierarchy."""
    found = []
    for hierarchy in CGROUP_ROOT.iterdir():
        top = hierarchy / "kata" / prefix
        if top.is_dir():
            found += [str(Path(d)) for d, _, _ in os.walk(top)]
    return found


def snapshot(pid: int, prefix: str) -> dict[str, Any]:
    return {
        "mounts": mounts_below(pid, KATA),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "zombies": zombie_children(pid),
        "threads": proc_status(pid, "Threads"),
        "cgroups": cgroups_below(prefix),
        "rss_kib": proc_status(pid, "VmRSS"),
    }


def leaks(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    return {
        "mounts": len(after["mounts"]) - len(before["mounts"]),
        "mounts_new": sorted(set(after["mounts"]) - set(before["mounts"])),
        "fds": after["fds"] - before["fds"],
        "zombies": len(after["zombies"]),
        "threads": after["threads"] - before["threads"],
        "cgroups": len(after["cgroups"]),
        "cgroups_left": after["cgroups"],
    }


# --- the agent ------------------------------------------------------------------------


def start_agent(address: str, busybox: Path, log: Path) -> subprocess.Popen[bytes]:
    script = (
        # Fresh tmpfs for the agent's trees and the runtime's state (/run/kata-agent): other
        # agents on this host must not see (or collide with) this one's containers.
        f"mount -t tmpfs -o mode=0755 pykata-soak {KATA} && "
        "mkdir -p /run/kata-agent && mount -t tmpfs -o mode=0700 pykata-soak /run/kata-agent && "
        f"mkdir -p {ROOTFS} && "
        f'mount --bind "$0" {ROOTFS} && exec "$@"'
    )
    env = dict(os.environ)
    env.pop("INVOCATION_ID", None)
    env.update({"KATA_AGENT_SERVER_ADDR": address, "KATA_AGENT_LOG_LEVEL": "info"})
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--net",
                "sh",
                "-c",
                script,
                str(busybox),
                sys.executable,
                "-m",
                "pykata.agent",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )


async def wait_healthy(address: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            async with await Client.connect(address, timeout=1) as client:
                await client.call(
                    "grpc.Health",
                    "Check",
                    health_pb2.CheckRequest(),
                    health_pb2.HealthCheckResponse,
                )
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the agent did not come up") from None
            await asyncio.sleep(0.1)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def runtime_binary(log: Path) -> str:
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("msg") == "using OCI runtime":
            return str(record["runtime"])
    return "runc"


async def read_all(agent: Any, cid: str, exec_id: str) -> bytes:
    out = b""
    while True:
        resp = await agent.ReadStdout(
            agent_pb2.ReadStreamRequest(container_id=cid, exec_id=exec_id, len=32 * 1024),
            timeout=30,
        )
        if not resp.data:
            return out
        out += resp.data


async def lifecycle(agent: Any, cid: str, prefix: str) -> None:
    oci = from_dict(
        spec(ROOTFS, ["sh", "-c", f"echo soak-{cid}"], f"/{prefix}/{cid}"), oci_pb2.Spec()
    )
    await agent.CreateContainer(
        agent_pb2.CreateContainerRequest(container_id=cid, exec_id=cid, OCI=oci), timeout=60
    )
    await agent.StartContainer(agent_pb2.StartContainerRequest(container_id=cid), timeout=60)
    out = await read_all(agent, cid, cid)
    status = await agent.WaitProcess(
        agent_pb2.WaitProcessRequest(container_id=cid, exec_id=cid), timeout=60
    )
    await agent.RemoveContainer(
        agent_pb2.RemoveContainerRequest(container_id=cid, timeout=30), timeout=60
    )
    if out != f"soak-{cid}\n".encode() or status.status != 0:
        raise AssertionError(f"{cid}: output {out!r}, exit {status.status}")


async def exec_once(agent: Any, cid: str, exec_id: str) -> None:
    process = oci_pb2.Process(Args=["echo", exec_id], Env=["PATH=/bin"], Cwd="/")
    await agent.ExecProcess(
        agent_pb2.ExecProcessRequest(container_id=cid, exec_id=exec_id, process=process),
        timeout=60,
    )
    out = await read_all(agent, cid, exec_id)
    status = await agent.WaitProcess(
        agent_pb2.WaitProcessRequest(container_id=cid, exec_id=exec_id), timeout=60
    )
    if out != f"{exec_id}\n".encode() or status.status != 0:
        raise AssertionError(f"{exec_id}: output {out!r}, exit {status.status}")


async def dropped_client(address: str, cid: str, exec_id: str) -> None:
    """A client that starts a process, leaves WaitProcess and ReadStdout pending and hangs up."""
    client = await Client.connect(address)
    agent: Any = client.stub(AGENT_SERVICE)
    process = oci_pb2.Process(Args=["cat"], Env=["PATH=/bin"], Cwd="/")
    await agent.ExecProcess(
        agent_pb2.ExecProcessRequest(container_id=cid, exec_id=exec_id, process=process),
        timeout=60,
    )
    pending = [
        asyncio.ensure_future(agent.WaitProcess(
            agent_pb2.WaitProcessRequest(container_id=cid, exec_id=exec_id))),
        asyncio.ensure_future(agent.ReadStdout(
            agent_pb2.ReadStreamRequest(container_id=cid, exec_id=exec_id, len=4096))),
    ]  # fmt: skip
    await asyncio.sleep(0.05)  # the requests are on the wire
    await client.close()
    await asyncio.gather(*pending, return_exceptions=True)


async def soak_agent(lifecycles: int, execs: int, tmp: Path, dropped: int = 0) -> dict[str, Any]:
    """The agent part: counts before/after, leaks, rates."""
    address = f"unix://{tmp}/agent.sock"
    log = tmp / "agent.log"
    prefix = f"pykata-soak-{secrets.token_hex(4)}"
    busybox = make_busybox_rootfs(tmp / "busybox")
    process = start_agent(address, busybox, log)
    try:
        await wait_healthy(address, process)
        async with await Client.connect(address) as client:
            agent: Any = client.stub(AGENT_SERVICE)
            await agent.CreateSandbox(agent_pb2.CreateSandboxRequest(hostname="soak"), timeout=60)
            await lifecycle(agent, "warm", prefix)
            before = snapshot(process.pid, prefix)
            t0 = time.perf_counter()
            for i in range(lifecycles):
                await lifecycle(agent, f"c{i}", prefix)
            lifecycle_s = time.perf_counter() - t0
            oci = from_dict(spec(ROOTFS, ["sleep", "100000"], f"/{prefix}/ex"), oci_pb2.Spec())
            await agent.CreateContainer(
                agent_pb2.CreateContainerRequest(container_id="ex", exec_id="ex", OCI=oci),
                timeout=60,
            )
            await agent.StartContainer(agent_pb2.StartContainerRequest(container_id="ex"))
            # Proof the count looks in the right place: the running container's cgroups.
            cgroups_while_running = len(cgroups_below(prefix))
            t0 = time.perf_counter()
            for i in range(execs):
                await exec_once(agent, "ex", f"x{i}")
            exec_s = time.perf_counter() - t0
            for i in range(dropped):
                await dropped_client(address, "ex", f"d{i}")
            await agent.RemoveContainer(
                agent_pb2.RemoveContainerRequest(container_id="ex", timeout=30), timeout=60
            )
            await asyncio.sleep(0.5)  # let the reaper collect the last exits
            after = snapshot(process.pid, prefix)
            alive = await client.call(
                "grpc.Health", "Check", health_pb2.CheckRequest(), health_pb2.HealthCheckResponse
            )
    finally:
        stop(process)
    return {
        "runtime": runtime_binary(log),
        "lifecycles": lifecycles,
        "execs": execs,
        "dropped_clients": dropped,
        "agent_exited": process.returncode not in (0, -signal.SIGTERM) or alive.status != 1,
        "leaks": leaks(before, after),
        "cgroups_while_running": cgroups_while_running,
        "before": {k: v if isinstance(v, int) else len(v) for k, v in before.items()},
        "after": {k: v if isinstance(v, int) else len(v) for k, v in after.items()},
        "rss_kib_before": before["rss_kib"],
        "rss_kib_after": after["rss_kib"],
        "lifecycles_per_s": round(lifecycles / lifecycle_s, 2) if lifecycles else None,
        "execs_per_s": round(execs / exec_s, 2) if execs else None,
    }


def soak_direct(runtime: str, lifecycles: int, execs: int, tmp: Path) -> dict[str, Any]:
    """The same lifecycles and execs with the OCI runtime directly."""
    busybox = make_busybox_rootfs(tmp / "busybox-direct")
    state = tmp / "runc-state"
    prefix = f"pykata-soak-direct-{secrets.token_hex(4)}"

    def rt(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        kwargs.setdefault("check", True)
        return subprocess.run([runtime, "--root", str(state), *args], **kwargs)

    def bundle(cid: str, args: list[str]) -> Path:
        path = tmp / "bundles" / cid
        path.mkdir(parents=True)
        # Direct containers' cgroups: below /<prefix>, removed by runc delete.
        (path / "config.json").write_text(json.dumps(spec(str(busybox), args, f"/{prefix}/{cid}")))
        return path

    t0 = time.perf_counter()
    for i in range(lifecycles):
        cid = f"d{i}"
        path = bundle(cid, ["sh", "-c", f"echo soak-{cid}"])
        out = rt("run", "--bundle", str(path), cid, stdin=subprocess.DEVNULL, capture_output=True)
        rt("delete", "--force", cid, capture_output=True, check=False)
        if out.stdout != f"soak-{cid}\n".encode():
            raise AssertionError(f"{cid}: {out.stdout!r}")
    lifecycle_s = time.perf_counter() - t0
    path = bundle("dex", ["sleep", "100000"])
    null = subprocess.DEVNULL
    rt("run", "-d", "--bundle", str(path), "dex", stdin=null, stdout=null, stderr=null)
    t0 = time.perf_counter()
    for i in range(execs):
        out = rt("exec", "dex", "echo", f"x{i}", stdin=null, capture_output=True)
        if out.stdout != f"x{i}\n".encode():
            raise AssertionError(f"x{i}: {out.stdout!r}")
    exec_s = time.perf_counter() - t0
    rt("delete", "--force", "dex")
    shutil.rmtree(tmp / "bundles")
    for hierarchy in CGROUP_ROOT.iterdir():
        if (hierarchy / prefix).is_dir():
            (hierarchy / prefix).rmdir()
    return {
        "lifecycles_per_s": round(lifecycles / lifecycle_s, 2) if lifecycles else None,
        "execs_per_s": round(execs / exec_s, 2) if execs else None,
    }


async def run(
    lifecycles: int, execs: int, peer: bool, tmp: Path, dropped: int = 0
) -> dict[str, Any]:
    result: dict[str, Any] = {"agent": await soak_agent(lifecycles, execs, tmp, dropped)}
    if peer:
        direct = await asyncio.to_thread(
            soak_direct, result["agent"]["runtime"], lifecycles, execs, tmp
        )
        result["direct"] = direct
        for key in ("lifecycles_per_s", "execs_per_s"):
            if direct[key] and result["agent"][key]:
                result[f"{key}_ratio_agent_over_direct"] = round(
                    result["agent"][key] / direct[key], 2
                )
    return result


def report(result: dict[str, Any]) -> None:
    print(json.dumps(result))
    a = result["agent"]
    print(
        f"\nsoak: {time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, runtime {a['runtime']}, "
        f"{a['lifecycles']} lifecycles + {a['execs']} execs + {a['dropped_clients']} clients "
        "dropped mid-WaitProcess/ReadStdout"
    )
    leak = a["leaks"]
    for name in ("mounts", "fds", "zombies", "threads", "cgroups"):
        print(f"  leaked {name:<28} {leak[name]}")
    rss = f"{a['rss_kib_before'] / 1024:.1f} / {a['rss_kib_after'] / 1024:.1f} MiB"
    print(f"  RSS before / after {rss}")
    direct = result.get("direct") or {}
    for key, label in (("lifecycles_per_s", "lifecycles/s"), ("execs_per_s", "execs/s")):
        ratio = result.get(f"{key}_ratio_agent_over_direct")
        print(
            f"  {label:<14} agent {a[key]}  direct {direct.get(key, '-')}  "
            f"ratio {ratio if ratio is not None else '-'}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lifecycles", type=int, default=200)
    parser.add_argument("--execs", type=int, default=500)
    parser.add_argument(
        "--dropped", type=int, default=100, help="clients that hang up with calls pending"
    )
    parser.add_argument("--no-peer", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_soak.py runs the agent as root (mounts, namespaces, cgroups)")
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        result = asyncio.run(
            run(args.lifecycles, args.execs, not args.no_peer, Path(tmp), args.dropped)
        )
    report(result)


if __name__ == "__main__":
    main()
