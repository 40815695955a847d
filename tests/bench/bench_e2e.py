"""End-to-end benchmark: boot to the first Health.Check, and `kata-agent-ctl run` of `true`.

Usage: bench_e2e.py [--boots N] [--runs N]   (as root: mounts, QEMU, the agent on the host)

- boot: QEMU start (TCG here) with build/'s initrd until Health.Check answers over hybrid
  vsock, N boots, median; the console's announce line splits it into kernel+init and
  agent start-up.
- run: the CLI end to end (`kata-agent-ctl run --vm NAME ROOTFS -- true`: connect,
  sandbox check, bind mount into the shared folder, CreateContainer, StartContainer, stdio,
  WaitProcess, RemoveContainer, unmount), N runs, median, against the same command with the
  agent on this host over a unix socket (no VM, no virtio-fs, no vsock): ratio VM/host.
- RSS: the agent's resident memory once the runs have created the sandbox, in the guest (its
  GetMetrics figure, the guest's Python and libraries) against the host agent's VmRSS (this
  host's Python) in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pykata.builder import build
from pykata.builder.stages import Stages
from pykata.host.rootfs import make_busybox_rootfs
from pykata.host.vm.runner import VM
from pykata.host.vm.state import VMState
from pykata.protocols import agent_pb2, health_pb2
from pykata.ttrpc import Client

CTL = [sys.executable, "-m", "pykata.host.ctl.main"]
BOOT_TIMEOUT = 300.0


async def health_check(address: str) -> None:
    async with await Client.connect(address, timeout=BOOT_TIMEOUT) as client:
        await client.call(
            "grpc.Health", "Check", health_pb2.CheckRequest(),
            health_pb2.HealthCheckResponse, timeout=BOOT_TIMEOUT,
        )  # fmt: skip


async def agent_rss_mib(address: str) -> float:
    """The agent's own RSS as its GetMetrics reports it."""
    async with await Client.connect(address, timeout=BOOT_TIMEOUT) as client:
        reply = await client.call(
            "grpc.AgentService", "GetMetrics", agent_pb2.GetMetricsRequest(),
            agent_pb2.Metrics, timeout=60,
        )  # fmt: skip
    for line in reply.metrics.splitlines():
        if line.startswith("kata_agent_process_resident_memory_bytes "):
            return float(line.split()[1]) / 2**20
    raise RuntimeError("GetMetrics has no kata_agent_process_resident_memory_bytes")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def timed_runs(target: list[str], rootfs: Path, runs: int) -> list[float]:
    seconds = []
    for _ in range(runs):
        t0 = time.monotonic()
        subprocess.run([*CTL, "run", *target, str(rootfs), "--", "true"], check=True)
        seconds.append(time.monotonic() - t0)
    return seconds


async def boot(guest: build.Result, work: Path, shared: Path) -> tuple[VM, float, float]:
    """A started VM, seconds from QEMU's start to the agent's announce line on the console
    (polled every 0.1 s) and to the first Health.Check answered over vsock."""
    vm = VM(guest.kernel, guest.artifact, shared_dir=shared, workdir=work, name=work.name)
    t0 = time.monotonic()
    await vm.start()

    async def announced() -> float:
        await vm.wait_console('"msg": "announce"', BOOT_TIMEOUT)
        return time.monotonic() - t0

    announce = asyncio.create_task(announced())
    await health_check(vm.agent_address)
    healthy = time.monotonic() - t0
    return vm, await announce, healthy


async def main_async(boots: int, runs: int) -> None:
    stages = Stages(build.Options().output / "bench-e2e.log")
    build.setup(None, stages)
    guest = build.build(build.Options(flavour="initrd"), stages)
    with tempfile.TemporaryDirectory(prefix="pykata-bench-") as tmp:
        work = Path(tmp)
        os.environ["XDG_RUNTIME_DIR"] = str(work / "xdg")
        rootfs = make_busybox_rootfs(work / "rootfs")
        shared = work / "shared"
        healthy: list[float] = []
        announced: list[float] = []
        vm_runs: list[float] = []
        for n in range(boots):
            vm, to_announce, to_health = await boot(guest, work / f"vm{n}", shared)
            try:
                healthy.append(to_health)
                announced.append(to_announce)
                if n == 0:
                    VMState(
                        name=vm.name,
                        agent_address=vm.agent_address,
                        shared_dir=str(shared),
                        console_log=str(vm.console_log),
                        workdir=str(vm.workdir),
                        accel=str(vm.accel),
                        pids=vm.pids,
                    ).save()
                    vm_runs = await asyncio.to_thread(timed_runs, ["--vm", vm.name], rootfs, runs)
                    guest_rss = await agent_rss_mib(vm.agent_address)
                accel = vm.accel
            finally:
                await vm.stop()
        host_runs, host_rss = await asyncio.to_thread(host_agent_runs, work, rootfs, runs)
    vm_median, host_median = statistics.median(vm_runs), statistics.median(host_runs)
    print(f"date {time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} CPUs, {accel}")
    print(
        f"boot to first Health.Check: median {statistics.median(healthy):.1f}s over {boots} "
        f"boots ({', '.join(f'{s:.1f}' for s in healthy)}); agent announce at "
        f"{statistics.median(announced):.1f}s"
    )
    print(
        f"kata-agent-ctl run -- true: VM {vm_median:.2f}s, host agent {host_median:.2f}s "
        f"(median of {runs}), ratio VM/host {vm_median / host_median:.1f}"
    )
    print(
        f"agent RSS after CreateSandbox: guest {guest_rss:.1f} MiB, host agent {host_rss:.1f} "
        f"MiB, ratio guest/host {guest_rss / host_rss:.2f}"
    )


def host_agent_runs(work: Path, rootfs: Path, runs: int) -> tuple[list[float], float]:
    """Run times with the agent on this host, and its RSS (MiB) after them."""
    address = f"unix://@pykata-bench-e2e-{secrets.token_hex(4)}"
    env = {**os.environ, "KATA_AGENT_SERVER_ADDR": address}
    env.pop("INVOCATION_ID", None)  # never the host's kernel command line
    with (work / "host-agent.log").open("wb") as log:
        agent = subprocess.Popen(
            [sys.executable, "-m", "pykata.agent"], env=env, stdout=log, stderr=log
        )
    try:
        asyncio.run(health_check(address))
        seconds = timed_runs(["--server-address", address], rootfs, runs)
        return seconds, rss_kib(agent.pid) / 1024
    finally:
        subprocess.run([*CTL, "destroy", "--server-address", address], check=False)
        agent.terminate()
        agent.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boots", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main_async(args.boots, args.runs))


if __name__ == "__main__":
    main()
