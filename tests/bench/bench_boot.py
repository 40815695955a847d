"""Boot timeline: where a guest boot's time goes, QEMU start to CreateSandbox answered.

Usage: bench_boot.py [--boots N] [--kernel debian|ours|both] [--initrd PATH] [--chart PATH]
                     [--verbose-console]   (as root: QEMU, virtiofsd, the shared mount)

Boots the initrd (build/'s, built or reused like `just image`; or --initrd) N times with
Debian's cloud kernel and N times with ours (only when `just kernel --source build` built it
from the current fragments), alternating kernels boot by boot so machine load hits both
alike. Each boot is the VM runner's (hybrid vsock, the shared folder over virtio-fs, QEMU TCG
here) with `quiet` on the kernel command line. Its console is read from a FIFO and each line
stamped on arrival; the agent's announce line (uptime, exec-uptime) places kernel start and
/init exec on the host's clock, its "agent ready" line checks that mapping (drift). A ttRPC
client dials from QEMU's start: first Health.Check answered, then a minimal CreateSandbox
(the shared folder's virtio-fs storage, as Kata sends it).

Prints per kernel the median of each phase and of the time it ends, the initrd's compressed
and unpacked sizes, the load average at start and end, one JSON line with every raw figure,
and writes a chart (stacked bars of the median phases) to --chart.

--verbose-console drops `quiet` (loglevel=7, printk.time=1) to show, from the kernel's own
lines, how "kernel start -> /init exec" splits into initramfs unpack and the rest; printing
them costs boot time under TCG, so its totals are not comparable with quiet boots.
Debian's initrd carries modules only Debian's kernel can load: on ours the agent fails to
load them (and logs it); build the initrd with `--kernel-source build` and pass it with
--initrd to boot ours with its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from google.protobuf import empty_pb2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.boot_timeline import (
    OUR_KERNEL,
    ConsoleReader,
    Summary,
    Timeline,
    initrd_sizes,
    kernel_split_table,
    our_kernel_built,
    phase_table,
    summarise,
    timeline,
    write_chart,
)

from pykata.builder import build, layout
from pykata.builder.stages import Stages
from pykata.host.ctl.run import SHARED_STORAGE
from pykata.host.vm.kvm import kvm_works
from pykata.host.vm.qemu import QEMU_BINARY
from pykata.host.vm.runner import VM
from pykata.protocols import agent_pb2, health_pb2
from pykata.ttrpc import Client

ROOT = Path(__file__).resolve().parents[2]
BOOT_TIMEOUT = 300.0
QUIET = "quiet"
# loglevel=7: the marks are KERN_INFO lines, which loglevel=6 hides.
VERBOSE = "loglevel=7 printk.time=1"
# exec-uptime and printk stamps are 10 ms ticks apart at worst, on two guest clocks.
EXEC_TOLERANCE = 0.05


def guest_artifacts(initrd: Path | None, want_debian: bool, stages: Stages) -> tuple[Path, Path]:
    """The initrd to boot and Debian's cloud kernel (built with build/'s initrd, else from
    the kernel cache)."""
    if initrd is None:
        build.setup(None, stages)
        guest = build.build(build.Options(flavour="initrd"), stages)
        return guest.artifact, guest.kernel
    if not want_debian:
        return initrd, Path()
    cache = layout.cache_root()
    debian = build.get_kernel("debian", build.prepare_apt(cache, None, stages), cache, stages)
    return initrd, debian.image


async def boot(
    kernel_name: str,
    kernel: Path,
    accel: str,
    initrd: Path,
    workdir: Path,
    shared: Path,
    append: str,
) -> Timeline:
    """One boot, QEMU start to CreateSandbox answered, then the VM stopped."""
    vm = VM(
        kernel, initrd, shared_dir=shared, workdir=workdir, name=workdir.name,
        append=append, accel=accel, console_pipe=True,
    )  # fmt: skip
    reader = None
    try:
        await vm.start()
        reader = ConsoleReader(vm.console_stream)
        async with await Client.connect(vm.agent_address, timeout=BOOT_TIMEOUT) as client:
            await client.call(
                "grpc.Health", "Check", health_pb2.CheckRequest(),
                health_pb2.HealthCheckResponse, timeout=BOOT_TIMEOUT,
            )  # fmt: skip
            health = time.monotonic()
            request = agent_pb2.CreateSandboxRequest(
                hostname="bench-boot", sandbox_id=vm.name, storages=[SHARED_STORAGE]
            )
            await client.call(
                "grpc.AgentService", "CreateSandbox", request, empty_pb2.Empty, timeout=60
            )
            sandbox = time.monotonic()
    finally:
        lines = reader.close() if reader is not None else []
        await vm.stop()
    assert vm.qemu_started is not None
    return timeline(kernel_name, lines, vm.qemu_started, health, sandbox)


async def run_boots(
    kernels: list[tuple[str, Path, str]], initrd: Path, boots: int, append: str, work: Path
) -> list[Timeline]:
    """N boots per kernel, in boot order; kernels alternate boot by boot."""
    shared = work / "shared"
    timelines = []
    for n in range(boots):
        for name, kernel, accel in kernels:
            t = await boot(name, kernel, accel, initrd, work / f"{name}{n}", shared, append)
            print(
                f"boot {n + 1}/{boots}, {name}: kernel start {t.at['kernel_start']:.2f} s, "
                f"announce {t.at['announce']:.2f} s, CreateSandbox {t.at['sandbox']:.2f} s",
                flush=True,
            )
            timelines.append(t)
    return timelines


def qemu_version() -> str:
    out = subprocess.run(
        [QEMU_BINARY, "--version"], capture_output=True, text=True, check=True
    ).stdout
    return out.splitlines()[0].removeprefix("QEMU emulator version ")


def load() -> tuple[float, float, float]:
    return os.getloadavg()


def report(
    summaries: list[Summary],
    timelines: list[Timeline],
    facts: dict[str, object],
    verbose: bool,
) -> None:
    print(phase_table(summaries))
    split = kernel_split_table(summaries)
    if split is not None:
        print()
        print(split)
    for s in summaries:
        off = s.run_init.get("exec_vs_run_init")
        if off is not None and abs(off) > EXEC_TOLERANCE:
            print(
                f"\nwarning ({s.kernel}): the announce line's exec-uptime is {off:+.2f} s off "
                "the kernel's \"Run /init\" line, so it is not when /init was exec'd and the "
                "/init exec boundary above is off by as much (PID 1's start time in "
                "/proc/self/stat is when the kernel made its init task, before the initramfs "
                "was unpacked, not the exec)."
            )
    if not verbose:
        print(
            "\n/init exec is kernel start + the announce line's exec-uptime; "
            '--verbose-console checks it against the kernel\'s "Run /init" line.'
        )
    if verbose:
        print(
            "\nverbose console: the kernel's lines go out through an emulated UART under TCG, "
            "which itself costs boot time; compare totals with quiet boots only."
        )
    raw = {
        **facts,
        "boots": [asdict(t) for t in timelines],
        "medians": [asdict(s) for s in summaries],
    }
    print(json.dumps(raw))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boots", type=int, default=5, help="boots per kernel (default 5)")
    parser.add_argument("--kernel", choices=["debian", "ours", "both"], default="both")
    parser.add_argument("--initrd", type=Path, help="boot this initrd instead of building one")
    parser.add_argument("--chart", type=Path, default=ROOT / "docs/boot-timeline.png")
    parser.add_argument(
        "--verbose-console", action="store_true",
        help="no `quiet` (loglevel=7, printk.time=1): split kernel start -> /init",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.boots < 1:
        parser.error("--boots must be at least 1")
    if args.initrd is not None and not args.initrd.is_file():
        parser.error(f"--initrd {args.initrd}: no such file")
    load_start = load()
    want_ours = args.kernel in ("ours", "both")
    if want_ours and not our_kernel_built():
        message = (
            "our kernel: not built from the current kernel-config fragments "
            "(`just kernel --source build` builds it)"
        )
        if args.kernel == "ours":
            parser.error(message)
        print(message + ": skipped, Debian's kernel only", flush=True)
        want_ours = False
    stages = Stages(build.Options().output / "bench-boot.log")
    initrd, debian_kernel = guest_artifacts(args.initrd, args.kernel != "ours", stages)
    paths = ([("debian", debian_kernel)] if args.kernel != "ours" else []) + (
        [("ours", OUR_KERNEL)] if want_ours else []
    )
    kernels = [(name, path, "kvm" if kvm_works(path) else "tcg") for name, path in paths]
    sizes = initrd_sizes(initrd)
    append = VERBOSE if args.verbose_console else QUIET
    facts: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "qemu": qemu_version(),
        "kernels": {name: {"path": str(path), "accel": accel} for name, path, accel in kernels},
        "initrd": {"path": str(initrd), **asdict(sizes)},
        "append": append,
        "load_start": load_start,
    }
    print(
        f"{facts['date']}, {facts['host']}, {facts['cpus']} CPUs, QEMU {facts['qemu']}, "
        f"kernel command line +{append!r}"
    )
    for name, path, accel in kernels:
        print(f"kernel {name}: {path} ({path.stat().st_size / 1e6:.1f} MB), {accel}")
    print(
        f"initrd {initrd}: {sizes.compressed_bytes / 1e6:.2f} MB ({sizes.compression}), "
        f"unpacked {sizes.cpio.file_bytes / 1e6:.2f} MB in {sizes.cpio.members} members "
        f"(cpio stream {sizes.cpio.archive_bytes / 1e6:.2f} MB)"
    )
    print(f"load average at start {' '.join(f'{x:.2f}' for x in load_start)}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="pykata-bench-boot-"))
    try:
        timelines = asyncio.run(run_boots(kernels, initrd, args.boots, append, work))
    except BaseException:
        print(f"boot failed; consoles and logs kept in {work}", file=sys.stderr)
        raise
    shutil.rmtree(work)
    facts["load_end"] = load_end = load()
    print(f"load average at end {' '.join(f'{x:.2f}' for x in load_end)}\n")
    summaries = [summarise([t for t in timelines if t.kernel == k[0]]) for k in kernels]
    report(summaries, timelines, facts, args.verbose_console)
    title = (
        f"{facts['date']}, {kernels[0][2]}, load {load_start[0]:.1f} -> {load_end[0]:.1f}: "
        f"QEMU start to CreateSandbox answered, kernel command line +{append!r}\ninitrd "
        f"{sizes.compressed_bytes / 1e6:.1f} MB ({sizes.compression}), "
        f"{sizes.cpio.file_bytes / 1e6:.1f} MB unpacked"
    )
    write_chart(summaries, args.chart, title)
    print(f"chart: {args.chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
