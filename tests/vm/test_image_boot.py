"""Boot the built guest under QEMU TCG: the agent must start and announce itself.

The initrd with Debian's cloud kernel always runs (the agent is PID 1). Our own kernel takes
~8 minutes to build on two cores, so the tests that need it run once `just kernel --source
build` (or an earlier run) has left it in the cache: the initrd with our kernel, and the disk
image whose root file system our kernel mounts itself (systemd starts kata-agent.service).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pykata.builder import build, kernel, layout
from pykata.builder.build import Result
from pykata.builder.stages import Stages

# TCG is slow and this machine is shared; the Debian kernel reaches /init in a few seconds.
BOOT_TIMEOUT = 180.0
QEMU = "qemu-system-x86_64"
# The agent's log message once it listens for the runtime (after loading modules, mounting).
READY = "agent ready"


@pytest.fixture
def custom_kernel() -> None:
    """Tests never start that build themselves (~8 min on 2 cores): `just test` runs its
    kernel stage before this tier."""
    if not kernel.current_build(layout.cache_root() / "kernel/build", layout.fragments()):
        pytest.fail(
            "our kernel is not built from the current kernel-config/ fragments: "
            "`just kernel --source build` (or the kernel stage of `just test`) builds it"
        )


def record(line: str) -> dict[str, Any] | None:
    """The agent's JSON log record on this console line, if any (possibly after kernel
    noise on the same line)."""
    start = line.find("{")
    if start < 0:
        return None
    try:
        parsed = json.loads(line[start:])
    except json.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) and "msg" in parsed else None


def boot(
    kernel: Path, console: Path, cmdline: str, *disk: str
) -> tuple[float, list[dict[str, Any]]]:
    """Boot until the agent listens (READY); returns (seconds from QEMU start to the announce
    line, the agent's log records up to READY)."""
    cmd = [
        QEMU, "-machine", "q35,accel=tcg", "-cpu", "max", "-m", "1024", "-smp", "2",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-serial", f"file:{console}", "-kernel", str(kernel), *disk,
        "-append", f"console=ttyS0 panic=-1 {cmdline}",
    ]  # fmt: skip
    t0 = time.monotonic()
    announced: float | None = None
    qemu = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while time.monotonic() - t0 < BOOT_TIMEOUT:
            text = console.read_text(errors="replace") if console.exists() else ""
            records = [r for r in map(record, text.splitlines()) if r is not None]
            if announced is None and any(r["msg"] == "announce" for r in records):
                announced = time.monotonic() - t0
            if announced is not None and any(r["msg"] == READY for r in records):
                return announced, records
            if "Kernel panic" in text or qemu.poll() is not None:
                time.sleep(0.5)  # let the rest of the panic reach the log
                break
            time.sleep(0.2)
    finally:
        qemu.kill()
        _, err = qemu.communicate()
    tail = "\n".join(console.read_text(errors="replace").splitlines()[-40:])
    seen = "announce seen" if announced is not None else "no announce line"
    pytest.fail(
        f"{seen}, agent not ready (qemu stderr: {err.decode().strip()!r}); console:\n{tail}"
    )


def errors(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Error records, e.g. a kernel module that failed to load or a mount that failed."""
    return [r for r in records if r.get("level") in ("error", "fatal", "critical")]


def built_with_custom_kernel(flavour: str) -> Result:
    output = layout.cache_root() / "test-artifacts" / f"{flavour}-build"
    options = build.Options(flavour=flavour, kernel_source="build", output=output)
    return build.build(options, Stages(output / "kata-image.log"))


@pytest.mark.vm
def test_initrd_boots_agent_as_pid1(
    guest_artifacts: Result, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    initrd = str(guest_artifacts.artifact)
    seconds, records = boot(
        guest_artifacts.kernel, tmp_path / "console", "quiet", "-initrd", initrd
    )
    record_property("boot_to_announce_seconds", round(seconds, 1))
    print(f"TCG boot to announce (Debian kernel, initrd): {seconds:.1f}s")
    (announce,) = [r for r in records if r["msg"] == "announce"]
    assert announce.get("pid") == 1
    assert announce.get("name") == "kata-agent"
    (ready,) = [r for r in records if r["msg"] == READY]
    assert ready.get("protobuf") == "upb"  # the C backend loads (it needs libstdc++)
    # modprobe of the modules the builder picked (and their dependencies) succeeded.
    assert errors(records) == []


@pytest.mark.vm
@pytest.mark.usefixtures("custom_kernel")
def test_initrd_boots_with_our_kernel(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    result = built_with_custom_kernel("initrd")
    manifest = json.loads(result.manifest.read_text())
    assert manifest["kernel"]["source"] == "build"
    assert manifest["modules"] == []
    seconds, records = boot(
        result.kernel, tmp_path / "console", "quiet", "-initrd", str(result.artifact)
    )
    assert errors(records) == []
    record_property("boot_to_announce_seconds", round(seconds, 1))
    print(f"TCG boot to announce (our kernel, initrd): {seconds:.1f}s")


@pytest.mark.vm
@pytest.mark.usefixtures("custom_kernel")
def test_disk_image_boots_agent_under_systemd(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    result = built_with_custom_kernel("image")
    # The same root= Kata's runtime passes for a virtio-blk image (partition 1).
    seconds, records = boot(
        result.kernel,
        tmp_path / "console",
        "root=/dev/vda1 rootfstype=ext4 ro quiet",
        "-drive", f"file={result.artifact},if=virtio,format=raw,snapshot=on",
    )  # fmt: skip
    record_property("boot_to_announce_seconds", round(seconds, 1))
    print(f"TCG boot to announce (our kernel, disk image, systemd): {seconds:.1f}s")
    (announce,) = [r for r in records if r["msg"] == "announce"]
    assert announce.get("pid") != 1  # systemd is PID 1 here
    assert errors(records) == []
