"""Hot-upgrade benchmark: how long the agent pauses and what a container's output sees.

Usage: bench_upgrade.py [--upgrades N] [--no-vm]   (as root: namespaces, mounts, QEMU)

For the agent on this host (a root process under ``unshare --mount --net`` with tmpfs on
/run/kata-containers and /run/kata-agent, ops channel on a unix socket) and in a TCG guest
(our initrd, ``agent.ops_vport=1027`` over hybrid vsock), with a container printing a
numbered line every 10 ms read through ReadStdout: N upgrades alternating between two wheels
of this tree (pykata.host.agent_wheel), each measured as
- pause: the longest interval between two answers of a Health.Check loop on one connection
  across the upgrade (the client's view), and the agent's own ``pause_seconds`` (from the
  moment the old agent stopped reading until the new one was ready);
- output gap: the longest interval between two chunks of the container's output across it;
- lines lost or repeated (must be 0);
and the agent's RSS (ops Status) before the first upgrade and after the last.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pykata.agent.version import VERSION
from pykata.builder import build
from pykata.builder.stages import Stages
from pykata.host.agent_wheel import build_agent_wheel
from pykata.host.ctl.ops import ops_stub, send_upgrade, wait_outcome
from pykata.host.ctl.run import HOSTNAME, SHARED_STORAGE
from pykata.host.ctl.share import share_rootfs
from pykata.host.ctl.spec import ProcessOptions, build_spec
from pykata.host.ctl.target import Target
from pykata.host.rootfs import make_busybox_rootfs
from pykata.host.vm.runner import VM
from pykata.protocols import agent_pb2, health_pb2, ops_pb2
from pykata.ttrpc import Client

AGENT_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"]
KATA = "/run/kata-containers"
CID = "counter"
COUNTER = "i=0; while true; do i=$((i+1)); echo $i; usleep 10000; done"
OPS_PORT = 1027
TIMEOUT = 300.0
READY_TIMEOUT = 240


class Stream:
    """The counter's output with the arrival time of every chunk."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.chunks: list[tuple[float, bytes]] = []
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        request = agent_pb2.ReadStreamRequest(container_id=CID, exec_id=CID, len=4096)
        while True:
            reply = await self.agent.ReadStdout(request)
            if not reply.data:
                return
            self.chunks.append((time.monotonic(), reply.data))

    def longest_gap(self, start: float, end: float) -> float:
        times = [t for t, _ in self.chunks if start <= t <= end]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def lost_or_repeated(self) -> int:
        numbers = [int(n) for n in b"".join(d for _, d in self.chunks).split(b"\n")[:-1]]
        return sum(1 for i, n in enumerate(numbers, 1) if n != i)


async def check_loop(health: Any, answers: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        await health.Check(health_pb2.CheckRequest(), timeout=TIMEOUT)
        answers.append(time.monotonic())


async def measure(
    agent_address: str,
    ops_address: str,
    create: Callable[[Any], Awaitable[None]],
    wheels: list[Path],
    upgrades: int,
) -> dict[str, Any]:
    async with (
        await Client.connect(agent_address, timeout=TIMEOUT) as client,
        await Client.connect(agent_address, timeout=TIMEOUT) as prober,
        await Client.connect(ops_address, timeout=TIMEOUT) as ops_client,
    ):
        agent = client.stub(AGENT_SERVICE)
        ops = ops_stub(ops_client)
        await create(agent)
        stream = Stream(agent)
        await asyncio.sleep(1.0)
        before = await ops.Status(ops_pb2.StatusRequest(), timeout=TIMEOUT)
        runs = []
        for i in range(upgrades):
            answers: list[float] = []
            stop = asyncio.Event()
            checks = asyncio.ensure_future(check_loop(prober.stub(HEALTH_SERVICE), answers, stop))
            await asyncio.sleep(0.5)
            start = time.monotonic()
            data = await asyncio.to_thread(wheels[i % len(wheels)].read_bytes)
            await send_upgrade(ops, data, ready_timeout=READY_TIMEOUT)
            done = await wait_outcome(ops, TIMEOUT)
            if done.phase != "done":
                raise RuntimeError(f"upgrade {i}: {done.phase}: {done.message}")
            await asyncio.sleep(0.5)
            end = time.monotonic()
            stop.set()
            await checks
            checked = [t for t in answers if start - 0.5 <= t <= end]
            runs.append(
                {
                    "check_pause_s": round(max(b - a for a, b in itertools.pairwise(checked)), 3),
                    "reported_pause_s": round(done.pause_seconds, 3),
                    "output_gap_s": round(stream.longest_gap(start - 0.5, end), 3),
                    "total_s": round(end - start - 0.5, 2),
                }
            )
        after = await ops.Status(ops_pb2.StatusRequest(), timeout=TIMEOUT)
        await agent.SignalProcess(
            agent_pb2.SignalProcessRequest(container_id=CID, exec_id=CID, signal=9),
            timeout=TIMEOUT,
        )
        await asyncio.wait_for(stream.task, TIMEOUT)
        await agent.RemoveContainer(
            agent_pb2.RemoveContainerRequest(container_id=CID, timeout=30), timeout=TIMEOUT
        )
    return {
        "upgrades": runs,
        "median_check_pause_s": statistics.median(r["check_pause_s"] for r in runs),
        "median_reported_pause_s": statistics.median(r["reported_pause_s"] for r in runs),
        "max_output_gap_s": max(r["output_gap_s"] for r in runs),
        "lines_lost_or_repeated": stream.lost_or_repeated(),
        "rss_mib_before": round(before.rss_bytes / 2**20, 1),
        "rss_mib_after": round(after.rss_bytes / 2**20, 1),
        "versions": [before.agent_version, after.agent_version],
    }


def counter_spec(root: str, cgroup: str) -> dict[str, Any]:
    return {
        "ociVersion": "1.0.2",
        "process": {"args": ["sh", "-c", COUNTER], "env": ["PATH=/bin"], "cwd": "/"},
        "root": {"path": root},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")],
            "cgroupsPath": cgroup,
        },
    }


async def start_counter(agent: Any, spec: Any) -> None:
    await agent.CreateContainer(
        agent_pb2.CreateContainerRequest(container_id=CID, exec_id=CID, OCI=spec),
        timeout=TIMEOUT,
    )
    await agent.StartContainer(agent_pb2.StartContainerRequest(container_id=CID), timeout=TIMEOUT)


async def on_host(tmp: Path, wheels: list[Path], upgrades: int) -> dict[str, Any]:
    from pykata.agent.rpc.convert.oci import from_dict
    from pykata.protocols import oci_pb2

    busybox = make_busybox_rootfs(tmp / "rootfs")
    agent_address = f"unix://{tmp}/agent.sock"
    ops_address = f"unix://{tmp}/ops.sock"
    rootfs = f"{KATA}/shared/containers/{CID}/rootfs"
    script = (
        f"mount -t tmpfs -o mode=0755 pykata-bench-upgrade {KATA} && "
        "mkdir -p /run/kata-agent && "
        "mount -t tmpfs -o mode=0700 pykata-bench-upgrade /run/kata-agent && "
        f'mkdir -p {rootfs} && mount --bind "$0" {rootfs} && exec "$@"'
    )
    log = tmp / "agent.log"
    process = start_agent(script, busybox, agent_address, ops_address, log)
    cgroup = f"/pykata-bench-upgrade-{secrets.token_hex(3)}/{CID}"

    async def create(agent: Any) -> None:
        await agent.CreateSandbox(agent_pb2.CreateSandboxRequest(hostname="bench"), timeout=60)
        await start_counter(agent, from_dict(counter_spec(rootfs, cgroup), oci_pb2.Spec()))

    try:
        await wait_for(agent_address)
        return await measure(agent_address, ops_address, create, wheels, upgrades)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_agent(
    script: str, busybox: Path, agent_address: str, ops_address: str, log: Path
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "INVOCATION_ID"}
    env.update(
        KATA_AGENT_SERVER_ADDR=agent_address,
        KATA_AGENT_OPS_ADDR=ops_address,
        KATA_AGENT_LOG_LEVEL="info",
    )
    argv = ["unshare", "--mount", "--propagation", "private", "--net", "sh", "-c", script]
    with log.open("wb") as out:
        return subprocess.Popen(
            [*argv, str(busybox), sys.executable, "-m", "pykata.agent"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )


async def wait_for(address: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            async with await Client.connect(address, timeout=5) as client:
                await client.stub(HEALTH_SERVICE).Check(health_pb2.CheckRequest(), timeout=5)
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def in_guest(tmp: Path, wheels: list[Path], upgrades: int) -> dict[str, Any]:
    stages = Stages(tmp / "kata-image.log")
    build.setup(None, stages)
    guest = build.build(build.Options(flavour="initrd"), stages)
    busybox = make_busybox_rootfs(tmp / "rootfs")
    shared = tmp / "shared"
    async with VM(
        guest.kernel,
        guest.artifact,
        shared_dir=shared,
        workdir=tmp / "vm",
        name="bench-upgrade",
        append=f"agent.ops_vport={OPS_PORT}",
    ) as vm:
        target = Target(address=vm.agent_address, name="bench", shared_dir=shared, virtio_fs=True)

        async def create(agent: Any) -> None:
            await agent.CreateSandbox(
                agent_pb2.CreateSandboxRequest(hostname=HOSTNAME, storages=[SHARED_STORAGE]),
                timeout=TIMEOUT,
            )
            root, _ = share_rootfs(target, CID, busybox)
            options = ProcessOptions(args=["sh", "-c", COUNTER])
            await start_counter(agent, build_spec(options, root, HOSTNAME))

        await vm.wait_port(1024, within=TIMEOUT)
        return await measure(vm.agent_address, vm.vsock_address(OPS_PORT), create, wheels, upgrades)


def report(result: dict[str, Any]) -> None:
    print(json.dumps(result))
    print(
        f"\nupgrade: {time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    )
    for where, r in result.items():
        print(
            f"  {where:<6} pause (Health.Check loop) median {r['median_check_pause_s']} s, "
            f"agent-reported {r['median_reported_pause_s']} s, longest output gap "
            f"{r['max_output_gap_s']} s, lines lost/repeated {r['lines_lost_or_repeated']}, "
            f"RSS {r['rss_mib_before']} -> {r['rss_mib_after']} MiB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upgrades", type=int, default=3)
    parser.add_argument("--no-vm", action="store_true", help="the host agent only")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_upgrade.py runs the agent as root (mounts, namespaces, QEMU)")
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-upgrade-") as tmp:
        work = Path(tmp)
        wheels = [build_agent_wheel(work / "wheels", f"{VERSION}+bench{i}") for i in (1, 2)]
        result["host"] = asyncio.run(on_host(work / "host", wheels, args.upgrades))
        if not args.no_vm:
            result["guest"] = asyncio.run(in_guest(work / "guest", wheels, args.upgrades))
    report(result)


if __name__ == "__main__":
    main()
