"""Boot the built initrd under QEMU TCG: the agent must start as PID 1 and announce itself."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pykata.builder.build import Result

# TCG is slow and this machine is shared; the Debian kernel reaches /init in a few seconds.
BOOT_TIMEOUT = 180.0
QEMU = "qemu-system-x86_64"


def announce(line: str) -> dict[str, Any] | None:
    """The agent's announce record if this console line is one (a JSON object, possibly
    after kernel noise on the same line)."""
    start = line.find("{")
    if start < 0:
        return None
    try:
        record = json.loads(line[start:])
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and record.get("msg") == "announce" else None


def boot(kernel: Path, initrd: Path, console: Path) -> tuple[float, dict[str, Any]]:
    """Boot until the announce line; returns (seconds from QEMU start, the record)."""
    cmd = [
        QEMU, "-machine", "q35,accel=tcg", "-cpu", "max", "-m", "1024", "-smp", "2",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-serial", f"file:{console}", "-kernel", str(kernel), "-initrd", str(initrd),
        "-append", "console=ttyS0 panic=-1 quiet",
    ]  # fmt: skip
    t0 = time.monotonic()
    qemu = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while time.monotonic() - t0 < BOOT_TIMEOUT:
            text = console.read_text(errors="replace") if console.exists() else ""
            for line in text.splitlines():
                record = announce(line)
                if record is not None:
                    return time.monotonic() - t0, record
            if "Kernel panic" in text or qemu.poll() is not None:
                time.sleep(0.5)  # let the rest of the panic reach the log
                break
            time.sleep(0.2)
    finally:
        qemu.kill()
        _, err = qemu.communicate()
    tail = "\n".join(console.read_text(errors="replace").splitlines()[-40:])
    pytest.fail(f"no announce line (qemu stderr: {err.decode().strip()!r}); console:\n{tail}")


@pytest.mark.vm
def test_initrd_boots_agent_as_pid1(
    guest_artifacts: Result,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    if shutil.which(QEMU) is None:
        pytest.skip(f"{QEMU} not installed (just setup installs it)")
    seconds, record = boot(guest_artifacts.kernel, guest_artifacts.artifact, tmp_path / "console")
    record_property("boot_to_announce_seconds", round(seconds, 1))
    print(f"TCG boot to announce: {seconds:.1f}s")
    assert record.get("name", "kata-agent") == "kata-agent"
