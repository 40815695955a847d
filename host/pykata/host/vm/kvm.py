"""Does /dev/kvm really run our guests? Nested KVM on some hosts exists but fails.

A tiny ``KVM_RUN`` of a few real-mode instructions succeeds on such hosts while QEMU dies
setting MSRs or the kernel hangs, so the probe boots the real kernel under ``-accel kvm``
without an initrd and waits for it to reach the root-mount/init stage (where it panics and
QEMU exits). The answer is cached per host boot and kernel.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

from pykata.host.vm.process import die_with_parent
from pykata.host.vm.qemu import QEMU_BINARY

PROBE_TIMEOUT = 20.0
# Any of these on the console means the kernel ran all the way to looking for userspace.
LATE_BOOT_MARKS = ("Run /", "VFS: Unable to mount root", "No working init found")


def _cache_file(kernel: Path) -> Path:
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    digest = hashlib.sha256(kernel.read_bytes()).hexdigest()[:16]
    runtime = os.environ.get("XDG_RUNTIME_DIR") or "/run"
    return Path(runtime) / "pykata" / "kvm-probe" / f"{boot_id}-{digest}"


def boot_probe(kernel: Path) -> bool:
    """Boot ``kernel`` under KVM for at most PROBE_TIMEOUT seconds; True if it got far."""
    with tempfile.TemporaryDirectory(prefix="pykata-kvm-") as tmp:
        console = Path(tmp) / "console.log"
        cmd = [
            QEMU_BINARY, "-machine", "q35,accel=kvm", "-cpu", "host", "-m", "256M",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-serial", f"file:{console}", "-kernel", str(kernel),
            "-append", "console=ttyS0 panic=-1",
        ]  # fmt: skip
        # A hang is an answer too; the console tells how far it got.
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                cmd,
                capture_output=True,
                timeout=PROBE_TIMEOUT,
                check=False,
                preexec_fn=die_with_parent,
            )
        text = console.read_text(errors="replace") if console.exists() else ""
    return any(mark in text for mark in LATE_BOOT_MARKS)


def known_verdict(kernel: Path) -> bool | None:
    """kvm_works's answer when it costs nothing (no /dev/kvm, or probed this host boot),
    else None."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    cache = _cache_file(kernel)
    if cache.exists():
        return cache.read_text() == "kvm"
    return None


def kvm_works(kernel: Path) -> bool:
    """True when QEMU can boot ``kernel`` with KVM here (cached per host boot)."""
    known = known_verdict(kernel)
    if known is not None:
        return known
    cache = _cache_file(kernel)
    works = boot_probe(kernel)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text("kvm" if works else "tcg")
    return works
