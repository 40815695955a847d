"""Image builder figures: build times (cold, unchanged, new output), artifact sizes and the
QEMU TCG boot time from QEMU start to the agent's announce line, per kernel and flavour.

Usage: bench_image.py [--boots N] [--no-cold]   (as root; needs the package archives)

Cold drops mkosi's incremental cache (--clean) but keeps downloaded packages and wheels.
Our kernel is only measured when `just kernel --source build` has built it from the current
fragments (~8 minutes).
Boot times compare against a peer in the same run: Debian's cloud kernel with the same
initrd.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.boot_timeline import OUR_KERNEL, agent_record, our_kernel_built

from pykata.builder import build, layout
from pykata.builder.stages import Stages

QEMU = "qemu-system-x86_64"
BOOT_TIMEOUT = 180.0


def timed_build(options: build.Options) -> tuple[float, build.Result]:
    t0 = time.monotonic()
    result = build.build(options, Stages(options.output / "kata-image.log"))
    return time.monotonic() - t0, result


def boot_seconds(kernel: Path, cmdline: str, disk: list[str], workdir: Path) -> float:
    """Seconds from QEMU start to the agent's announce line on the serial console."""
    console = workdir / "console.log"
    console.unlink(missing_ok=True)
    cmd = [
        QEMU, "-machine", "q35,accel=tcg", "-cpu", "max", "-m", "1024", "-smp", "2",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-serial", f"file:{console}", "-kernel", str(kernel), *disk,
        "-append", f"console=ttyS0 panic=-1 quiet {cmdline}",
    ]  # fmt: skip
    t0 = time.monotonic()
    qemu = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.monotonic() - t0 < BOOT_TIMEOUT and qemu.poll() is None:
            text = console.read_text(errors="replace") if console.exists() else ""
            for line in text.splitlines():
                record = agent_record(line)
                if record is not None and record.get("msg") == "announce":
                    return time.monotonic() - t0
            time.sleep(0.1)
    finally:
        qemu.kill()
        qemu.wait()
    raise RuntimeError(f"no announce line; see {console}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boots", type=int, default=3)
    parser.add_argument("--no-cold", action="store_true", help="skip the cold build")
    args = parser.parse_args(argv)
    build.setup(None, Stages(layout.cache_root() / "logs" / "bench-setup.log"))
    work = Path(tempfile.mkdtemp(prefix="bench-image-"))
    rows: list[tuple[str, str]] = []

    out = work / "initrd"
    if not args.no_cold:
        seconds, _ = timed_build(build.Options(output=out, clean=True))
        rows.append(("build initrd, cold (no mkosi cache)", f"{seconds:.1f} s"))
    seconds, result = timed_build(build.Options(output=out))
    rows.append(("build initrd, inputs unchanged", f"{seconds:.1f} s (reused: {result.reused})"))
    seconds, result = timed_build(build.Options(output=work / "initrd-again"))
    rows.append(("build initrd, new output (mkosi cache)", f"{seconds:.1f} s"))
    size = result.artifact.stat().st_size
    rows.append(("initrd size (zstd)", f"{size / 1e6:.1f} MB"))

    boots: list[tuple[str, Path, str, list[str]]] = [
        ("Debian cloud kernel + initrd", result.kernel, "", ["-initrd", str(result.artifact)])
    ]
    ours_current = our_kernel_built()
    if ours_current:
        seconds, ours = timed_build(
            build.Options(output=work / "initrd-build", kernel_source="build")
        )
        rows.append(("build initrd with our (cached) kernel", f"{seconds:.1f} s"))
        boots.append(("our kernel + initrd", ours.kernel, "", ["-initrd", str(ours.artifact)]))
        seconds, image = timed_build(
            build.Options(flavour="image", output=work / "image", kernel_source="build")
        )
        rows.append(("build disk image (mkosi cache cold or warm)", f"{seconds:.1f} s"))
        rows.append(
            ("disk image size (ext4, raw)", f"{image.artifact.stat().st_size / 1e6:.1f} MB")
        )
        disk = ["-drive", f"file={image.artifact},if=virtio,format=raw,snapshot=on"]
        boots.append(("our kernel + disk image (systemd)", image.kernel, "root=/dev/vda1 ro", disk))
    kernel_mb = result.kernel.stat().st_size / 1e6
    rows.append(("Debian kernel size", f"{kernel_mb:.1f} MB"))
    if ours_current:
        rows.append(("our kernel size (bzImage, LZ4)", f"{OUR_KERNEL.stat().st_size / 1e6:.1f} MB"))

    for name, kernel_path, cmdline, disk in boots:
        times = [boot_seconds(kernel_path, cmdline, disk, work) for _ in range(args.boots)]
        rows.append(
            (f"TCG boot to announce: {name}",
             f"median {statistics.median(times):.1f} s (min {min(times):.1f}, n={len(times)})")
        )  # fmt: skip

    print("\n| figure | value |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
