"""`kata-agent-ctl run --volume IMAGE:/path`: ext4 images hot-plugged into a `vm up
--hotplug-ports` VM over QMP, read by the container, unplugged after it; a second run gets
the freed port (one TCG boot)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pykata.builder.build import Result
from pykata.host.rootfs import make_busybox_rootfs

pytestmark = [pytest.mark.vm, pytest.mark.root]

TIMEOUT = 300
CTL = [sys.executable, "-m", "pykata.host.ctl.main"]


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    # Short: the VM's sockets live below it.
    with tempfile.TemporaryDirectory(prefix="pykata-vol-") as tmp:
        yield Path(tmp)


def ext4_image(path: Path, files: dict[str, str]) -> Path:
    tree = path.with_suffix(".d")
    tree.mkdir()
    for name, text in files.items():
        (tree / name).write_text(text)
    with open(path, "wb") as f:
        f.truncate(16 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(path)], check=True)
    return path


def test_run_with_volumes(guest_artifacts: Result, runtime_dir: Path) -> None:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir)}

    def ctl(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CTL, *argv], capture_output=True, text=True, env=env, timeout=TIMEOUT
        )

    rootfs = make_busybox_rootfs(runtime_dir / "rootfs")
    first = ext4_image(runtime_dir / "one.img", {"hello": "hello from a volume\n"})
    second = ext4_image(runtime_dir / "two.img", {"hello": "and from another one\n"})
    not_ext4 = runtime_dir / "zeros.img"
    not_ext4.write_bytes(bytes(1 << 20))
    files = ["--kernel", str(guest_artifacts.kernel), "--initrd", str(guest_artifacts.artifact)]
    up = ctl("vm", "up", "vol", *files, "--hotplug-ports", "2")
    assert up.returncode == 0, up.stderr
    try:
        state = json.loads((runtime_dir / "pykata/vms/vol/vm.json").read_text())
        assert state["hotplug_ports"] == 2
        done = ctl("run", "--vm", "vol", "--volume", f"{first}:/data", str(rootfs), "--",
                   "cat", "/data/hello")  # fmt: skip
        assert (done.returncode, done.stdout) == (0, "hello from a volume\n"), done.stderr
        # Read-only, on the port the first run freed (hp0 again: both are free).
        script = "cat /data/hello; touch /data/x 2>/dev/null || echo read-only"
        done = ctl("run", "--vm", "vol", "--volume", f"{second}:/data:ro", str(rootfs), "--",
                   "sh", "-c", script)  # fmt: skip
        assert (done.returncode, done.stdout) == (0, "and from another one\nread-only\n"), (
            done.stderr
        )
        # Both ports in use by one container, then freed again.
        script = "cat /a/hello /b/hello"
        done = ctl("run", "--vm", "vol", "-v", f"{first}:/a", "-v", f"{second}:/b:ro",
                   str(rootfs), "--", "sh", "-c", script)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout == "hello from a volume\nand from another one\n"
        refused = ctl("run", "--vm", "vol", "-v", f"{not_ext4}:/z", str(rootfs), "--", "true")
        assert refused.returncode == 125
        assert "no file system found" in refused.stderr
        # Three volumes on two ports: the third finds none, the other two are unplugged.
        third = ext4_image(runtime_dir / "three.img", {"hello": "3\n"})
        refused = ctl("run", "--vm", "vol", "-v", f"{first}:/a", "-v", f"{second}:/b",
                      "-v", f"{third}:/c", str(rootfs), "--", "true")  # fmt: skip
        assert refused.returncode == 125
        assert "no free PCIe root port" in refused.stderr
        done = ctl("run", "--vm", "vol", "--volume", f"{third}:/data", str(rootfs), "--",
                   "cat", "/data/hello")  # fmt: skip
        assert (done.returncode, done.stdout) == (0, "3\n"), done.stderr
    finally:
        down = ctl("vm", "down", "vol")
    assert down.returncode == 0, down.stderr
