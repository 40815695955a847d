"""End-to-end benchmark: boot to the first Health.Check, and `kata-agent-ctl run` of `true`.

Usage: bench_e2e.py [--boots N] [--runs N]   (as root: mounts, QEMU, the agent on the host)

- boot: QEMU start (TCG here) with build/'s initrd until Health.Check answers over hybrid
  vsock, N boots, median; the console's announce line splits it into kernel+init and
  agent start-up.
- run: the CLI end to end (`kata-agent-ctl run --vm NAME ROOTFS -- true`: connect,
  sandbox check, bind mount into the shared folder, CreateContainer, StartContainer, stdio,
  WaitProcess, RemoveContainer, unmount), N runs, median, against the same command with the
  agent on this host over a unix socket (no VM, no virtio-fs, no vsock): ratio VM/host.
- memory: the agent's resident and anonymous memory as its GetMetrics reports them, once
  started (the first GetMetrics) and after the runs (sandbox created, containers gone), in
  the guest (the guest's Python and libraries) against the host agent (this host's Python).
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


async def agent_memory_mib(address: str) -> tuple[float, float]:
    """The agent's own (RSS, anonymous) memory as its GetMetrics reports them."""
    async with await Client.connect(address, timeout=BOOT_TIMEOUT) as client:
        reply = await client.call(
            "grpc.AgentService", "GetMetrics", agent_pb2.GetMetricsRequest(),
            agent_pb2.Metrics, timeout=60,
        )  # fmt: skip
    rss = anon = None
    for line in reply.metrics.splitlines():
        if line.startswith("kata_agent_process_resident_memory_bytes "):
            rss = float(line.split()[1]) / 2**20
        elif line.startswith('kata_agent_proc_status{item="rssanon"} '):
            anon = float(line.split()[1]) / 1024  # kB, as /proc reports it
    if rss is None or anon is None:
        raise RuntimeError("GetMetrics lacks the agent's resident or anonymous memory")
    return rss, anon


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
                    guest_start = await agent_memory_mib(vm.agent_address)
                    vm_runs = await asyncio.to_thread(timed_runs, ["--vm", vm.name], rootfs, runs)
                    guest_after = await agent_memory_mib(vm.agent_address)
                accel = vm.accel
            finally:
                await vm.stop()
        host_runs, host_start, host_after = await asyncio.to_thread(
            host_agent_runs, work, rootfs, runs
        )
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
    for when, guest_mem, host_mem in (
        ("started (first GetMetrics)", guest_start, host_start),
        (f"after CreateSandbox and {runs} runs", guest_after, host_after),
    ):
        print(
            f"agent memory {when}: guest RSS {guest_mem[0]:.1f} MiB, anonymous "
            f"{guest_mem[1]:.1f} MiB; host agent {host_mem[0]:.1f} / {host_mem[1]:.1f} MiB; "
            f"ratio guest/host RSS {guest_mem[0] / host_mem[0]:.2f}"
        )


def host_agent_runs(
    work: Path, rootfs: Path, runs: int
) -> tuple[list[float], tuple[float, float], tuple[float, float]]:
    """Run times with the agent on this host, and its (RSS, anonymous) memory in MiB once
    started and after the runs, read from GetMetrics as in the guest."""
    address = f"unix://@pykata-bench-e2e-{secrets.token_hex(4)}"
    env = {**os.environ, "KATA_AGENT_SERVER_ADDR": address}
    env.pop("INVOCATION_ID", None)  # never the host's kernel command line
    with (work / "host-agent.log").open("wb") as log:
        agent = subprocess.Popen(
            [sys.executable, "-m", "pykata.agent"], env=env, stdout=log, stderr=log
        )
    try:
        asyncio.run(health_check(address))
        started = asyncio.run(agent_memory_mib(address))
        seconds = timed_runs(["--server-address", address], rootfs, runs)
        return seconds, started, asyncio.run(agent_memory_mib(address))
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
