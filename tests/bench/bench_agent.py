"""Agent benchmark: containers and processes through the agent against the OCI runtime alone.

Usage: bench_agent.py [--rounds N] [--stream-mib M]   (as root: the agent mounts and runs runc)

Starts the real agent on an abstract unix socket, creates a sandbox and measures
- the agent's RSS and anonymous memory right after CreateSandbox;
- container create+start: CreateContainer+StartContainer through the agent against
  `<runtime> create` + `<runtime> start` of the same bundle run directly (alternating rounds,
  medians, ratio agent/direct);
- exec round trip: ExecProcess + WaitProcess of `true` against `<runtime> exec` of it;
- stdout throughput: M MiB printed by a process in the container, read with ReadStdout
  (32 KiB per call, as containerd's copy loop asks) against reading the stdout pipe of
  `<runtime> exec` directly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pykata.agent.mount import MS_BIND, mount, umount
from pykata.agent.rpc.convert.oci import from_dict
from pykata.host.rootfs import make_busybox_rootfs
from pykata.protocols import agent_pb2, health_pb2, oci_pb2
from pykata.ttrpc import Client

SHARED = "/run/kata-containers/shared/containers"
AGENT_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
READ_LEN = 32 * 1024


def spec(cid: str, root: str, args: list[str]) -> dict[str, Any]:
    return {
        "ociVersion": "1.0.2",
        "process": {"args": args, "env": ["PATH=/bin"], "cwd": "/"},
        "root": {"path": root},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")],
            "cgroupsPath": f"/pykata-bench-{cid}",
        },
    }


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, RssAnon): anonymous memory is what each pod pays, file pages can be shared."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon"):
            values[key] = int(value.split()[0])
    return values["VmRSS"], values["RssAnon"]


class Bench:
    def __init__(self, agent: Any, runtime: str, busybox: Path, tmp: Path) -> None:
        self.agent = agent
        self.runtime = runtime
        self.busybox = busybox
        self.tmp = tmp
        self.shares: list[str] = []

    def share(self, cid: str) -> str:
        target = f"{SHARED}/{cid}/rootfs"
        os.makedirs(target, exist_ok=True)
        mount(str(self.busybox), target, None, MS_BIND)
        self.shares.append(target)
        return target

    def unshare_all(self) -> None:
        for target in self.shares:
            umount(target)
            os.rmdir(target)
            os.rmdir(os.path.dirname(target))

    def rt(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [self.runtime, "--root", str(self.tmp / "state"), *args], check=True, **kwargs
        )

    async def agent_container(self, cid: str, args: list[str]) -> float:
        root = self.share(cid)
        request = agent_pb2.CreateContainerRequest(
            container_id=cid, exec_id=cid, OCI=from_dict(spec(cid, root, args), oci_pb2.Spec())
        )
        t0 = time.perf_counter()
        await self.agent.CreateContainer(request, timeout=60)
        await self.agent.StartContainer(agent_pb2.StartContainerRequest(container_id=cid))
        return time.perf_counter() - t0

    async def remove(self, cid: str) -> None:
        await self.agent.RemoveContainer(
            agent_pb2.RemoveContainerRequest(container_id=cid, timeout=30), timeout=60
        )

    def direct_bundle(self, cid: str, args: list[str]) -> Path:
        bundle = self.tmp / cid
        bundle.mkdir()
        (bundle / "config.json").write_text(json.dumps(spec(cid, str(self.busybox), args)))
        return bundle

    def direct_container(self, cid: str, args: list[str]) -> float:
        bundle = self.direct_bundle(cid, args)
        null = subprocess.DEVNULL
        t0 = time.perf_counter()
        self.rt("create", "--bundle", str(bundle), cid, stdin=null, stdout=null, stderr=null)
        self.rt("start", cid)
        return time.perf_counter() - t0

    def direct_remove(self, cid: str) -> None:
        self.rt("delete", "--force", cid)
        shutil.rmtree(self.tmp / cid)

    async def create_start(self, rounds: int) -> tuple[list[float], list[float]]:
        agent, direct = [], []
        # Warm-up: the agent detects its runtime on first use.
        await self.agent_container("warm", ["sleep", "1000"])
        await self.remove("warm")
        for i in range(rounds):
            agent.append(await self.agent_container(f"a{i}", ["sleep", "1000"]))
            await self.remove(f"a{i}")
            direct.append(self.direct_container(f"d{i}", ["sleep", "1000"]))
            self.direct_remove(f"d{i}")
        return agent, direct

    async def exec_round_trip(self, cid: str, rounds: int) -> tuple[list[float], list[float]]:
        agent, direct = [], []
        true = oci_pb2.Process(Args=["true"], Env=["PATH=/bin"], Cwd="/")
        for i in range(rounds):
            t0 = time.perf_counter()
            await self.agent.ExecProcess(
                agent_pb2.ExecProcessRequest(container_id=cid, exec_id=f"x{i}", process=true)
            )
            await self.agent.WaitProcess(
                agent_pb2.WaitProcessRequest(container_id=cid, exec_id=f"x{i}"), timeout=60
            )
            agent.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            self.rt("exec", f"{cid}-direct", "true")
            direct.append(time.perf_counter() - t0)
        return agent, direct

    def direct_stream(self, cid: str, command: list[str], mib: int) -> float:
        """Seconds to read the output of ``command`` from the runtime's stdout pipe."""
        t0 = time.perf_counter()
        direct = subprocess.Popen(
            [self.runtime, "--root", str(self.tmp / "state"), "exec", f"{cid}-direct", *command],
            stdout=subprocess.PIPE,
        )
        assert direct.stdout is not None
        total = 0
        while chunk := os.read(direct.stdout.fileno(), READ_LEN):
            total += len(chunk)
        direct.wait()
        seconds = time.perf_counter() - t0
        assert total == mib << 20, total
        return seconds

    async def stdout_throughput(self, cid: str, mib: int) -> tuple[float, float]:
        command = ["sh", "-c", f"yes 0123456789abcdef0123456789abcdef | head -c {mib << 20}"]
        process = oci_pb2.Process(Args=command, Env=["PATH=/bin"], Cwd="/")
        t0 = time.perf_counter()
        await self.agent.ExecProcess(
            agent_pb2.ExecProcessRequest(container_id=cid, exec_id="stream", process=process)
        )
        total = 0
        while True:
            resp = await self.agent.ReadStdout(
                agent_pb2.ReadStreamRequest(container_id=cid, exec_id="stream", len=READ_LEN)
            )
            if not resp.data:
                break
            total += len(resp.data)
        agent_s = time.perf_counter() - t0
        await self.agent.WaitProcess(
            agent_pb2.WaitProcessRequest(container_id=cid, exec_id="stream"), timeout=60
        )
        assert total == mib << 20, total

        direct_s = self.direct_stream(cid, command, mib)
        return (mib / agent_s, mib / direct_s)


def start_agent(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pykata.agent"], env=env, stdout=out, stderr=out
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
                raise SystemExit("the agent did not come up") from None
            await asyncio.sleep(0.1)


def runtime_binary(log: Path) -> str:
    """The runtime the agent chose (crun when it works, else runc): the direct runs use it."""
    for line in log.read_text().splitlines():
        record = json.loads(line)
        if record.get("msg") == "using OCI runtime":
            return str(record["runtime"])
    raise SystemExit("the agent did not log its OCI runtime")


def ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    address = f"unix://@pykata-bench-{secrets.token_hex(4)}"
    log = tmp / "agent.log"
    env = {**os.environ, "KATA_AGENT_SERVER_ADDR": address, "KATA_AGENT_LOG_LEVEL": "info"}
    env.pop("INVOCATION_ID", None)
    agent_process = start_agent(env, log)
    busybox = make_busybox_rootfs(tmp / "busybox")
    bench: Bench | None = None
    try:
        await wait_healthy(address, agent_process)
        async with await Client.connect(address) as client:
            agent = client.stub(AGENT_SERVICE)
            await agent.CreateSandbox(agent_pb2.CreateSandboxRequest(hostname="bench"))
            rss, anon = memory_kib(agent_process.pid)
            bench = Bench(agent, "", busybox, tmp)
            await bench.agent_container("probe", ["true"])
            await bench.remove("probe")
            bench.runtime = runtime_binary(log)
            create_agent, create_direct = await bench.create_start(args.rounds)
            await bench.agent_container("work", ["sleep", "1000"])
            bench.direct_container("work-direct", ["sleep", "1000"])
            exec_agent, exec_direct = await bench.exec_round_trip("work", args.rounds)
            stream_agent, stream_direct = await bench.stdout_throughput("work", args.stream_mib)
            bench.direct_remove("work-direct")
            await agent.DestroySandbox(agent_pb2.DestroySandboxRequest(), timeout=60)
    finally:
        if bench is not None:
            bench.unshare_all()
        if agent_process.poll() is None:
            agent_process.terminate()
        agent_process.wait()
    return {
        "runtime": bench.runtime,
        "rss_mib_after_create_sandbox": rss / 1024,
        "anon_mib_after_create_sandbox": anon / 1024,
        "create_start_ms_agent": ms(create_agent),
        "create_start_ms_direct": ms(create_direct),
        "create_start_ratio": ms(create_agent) / ms(create_direct),
        "exec_ms_agent": ms(exec_agent),
        "exec_ms_direct": ms(exec_direct),
        "exec_ratio": ms(exec_agent) / ms(exec_direct),
        "stdout_mb_s_agent": stream_agent,
        "stdout_mb_s_direct": stream_direct,
        "stdout_ratio": stream_agent / stream_direct,
    }


def line(name: str, value: str) -> None:
    print(f"  {name:<34} {value}")


def report(result: dict[str, Any], args: argparse.Namespace) -> None:
    print(json.dumps(result))
    print(
        f"\nagent bench: {time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, runtime {result['runtime']}, "
        f"{args.rounds} rounds (medians)"
    )
    line(
        "RSS / anonymous after CreateSandbox",
        f"{result['rss_mib_after_create_sandbox']:.1f} / "
        f"{result['anon_mib_after_create_sandbox']:.1f} MiB",
    )
    line(
        "create+start agent / direct",
        f"{result['create_start_ms_agent']:.1f} / {result['create_start_ms_direct']:.1f} ms"
        f" = {result['create_start_ratio']:.2f}",
    )
    line(
        "exec round trip agent / direct",
        f"{result['exec_ms_agent']:.1f} / {result['exec_ms_direct']:.1f} ms"
        f" = {result['exec_ratio']:.2f}",
    )
    line(
        "stdout agent / direct",
        f"{result['stdout_mb_s_agent']:.0f} / {result['stdout_mb_s_direct']:.0f} MiB/s"
        f" = {result['stdout_ratio']:.2f}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--stream-mib", type=int, default=256)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_agent.py runs the agent as root (mounts, namespaces, cgroups)")
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        result = asyncio.run(run(args, Path(tmp)))
    report(result, args)


if __name__ == "__main__":
    main()
