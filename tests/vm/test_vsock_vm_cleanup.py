"""The VM runner leaves nothing behind when its user is interrupted (Ctrl-C) or killed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from guest_echo.build import GuestImage, build_guest

from pykata.host.vm.sharedfs import is_mount_point, remove_shared_mount

pytestmark = [
    pytest.mark.vm,
]

# Boots the guest, prints the VM's pids as JSON, then waits to be interrupted.
USER = """
import asyncio, json, sys
from pathlib import Path
from pykata.host.vm.runner import VM

async def main():
    vm = VM(Path(sys.argv[1]), Path(sys.argv[2]), shared_dir=Path(sys.argv[3]) / "shared",
            workdir=Path(sys.argv[3]) / "vm", memory_mib=256, accel="tcg")
    async with vm:
        await vm.wait_console("guest-echo: ready")
        print(json.dumps(vm.pids), flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def guest() -> GuestImage:
    return build_guest()


@pytest.fixture
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="pykata-cleanup-") as tmp:
        yield Path(tmp)
        # A killed user leaves the shared folder's mount behind (nothing of ours is left to
        # remove it; a next start would reuse it): unmounted, the folder can be deleted.
        remove_shared_mount(Path(tmp) / "shared")


def start_user(guest: GuestImage, workdir: Path) -> tuple[subprocess.Popen[str], dict[str, int]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", USER, str(guest.kernel), str(guest.initrd), str(workdir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, "the VM user died before the guest was up"
    pids: dict[str, int] = json.loads(line)
    assert set(pids) == {"qemu", "vsock", "virtiofsd"}
    return proc, pids


def gone(pids: dict[str, int], within: float = 20.0) -> list[str]:
    """Roles whose process still runs after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        alive = [role for role, pid in pids.items() if _running(pid)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def test_ctrl_c_stops_every_process_and_removes_sockets(guest: GuestImage, workdir: Path) -> None:
    proc, pids = start_user(guest, workdir)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) != 0  # KeyboardInterrupt after the cleanup
    assert gone(pids, within=0) == []
    assert not list((workdir / "vm").glob("*.sock"))
    assert not is_mount_point(workdir / "shared")
    assert (workdir / "vm" / "console.log").exists()


def test_killed_user_takes_its_vm_along(guest: GuestImage, workdir: Path) -> None:
    proc, pids = start_user(guest, workdir)
    proc.kill()
    proc.wait(timeout=10)
    assert gone(pids) == []  # PR_SET_PDEATHSIG
