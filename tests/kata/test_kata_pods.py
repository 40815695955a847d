"""Pods through the unmodified Kata Go shim on our image (see conftest.py for the stack)."""

from __future__ import annotations

import os
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from stack import RUNTIME, Kata

# What must not outlive a pod: the shim, the launcher, QEMU, the vsock back-end, virtiofsd.
POD_PROCESSES = (b"containerd-shim-kata-v2", b"kata-clh", b"qemu-system", b"pykata.host.vsock",
                 b"virtiofsd")  # fmt: skip


def pod_processes(kata: Kata) -> list[str]:
    """Pod processes of this stack: those in containerd's mount namespace."""
    found = []
    namespace = kata.containerd.mount_namespace()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            mine = os.readlink(entry / "ns" / "mnt") == namespace
        except OSError:
            continue
        if mine and any(name in cmdline for name in POD_PROCESSES):
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


def wait_gone(kata: Kata, within: float = 15.0) -> list[str]:
    deadline = time.monotonic() + within
    while (left := pod_processes(kata)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_run_prints_output_and_exit_code(kata: Kata) -> None:
    done = kata.run("pod-run", "sh", "-c", "echo hello from kata; uname -r; exit 3")
    assert done.returncode == 3, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "hello from kata"
    # The container runs in our guest, not on this host's kernel.
    assert lines[1] != Path("/proc/sys/kernel/osrelease").read_text().strip()
    assert wait_gone(kata) == []


def test_terminal(kata: Kata) -> None:
    ctr = [
        "ctr", "--address", str(kata.containerd.socket), "--namespace", "pykata-test",
        "run", "--rm", "-t", "--runtime", RUNTIME, kata.image, "pod-tty",
        "sh", "-c", "tty; exit 5",
    ]  # fmt: skip
    done = kata.containerd.in_namespace("script", "-qec", shlex.join(ctr), "/dev/null")
    assert done.returncode == 5, done.stdout + done.stderr
    assert "/dev/pts/" in done.stdout
    assert wait_gone(kata) == []


def test_detached_container_exec_kill_and_delete_leave_nothing(kata: Kata) -> None:
    ctr = kata.containerd.ctr
    started = ctr("run", "-d", "--runtime", RUNTIME, kata.image, "pod-detached", "sleep", "600")
    assert started.returncode == 0, started.stderr
    try:
        exec_ = ctr(
            "task", "exec", "--exec-id", "e1", "pod-detached", "sh", "-c", "echo in; exit 4"
        )
        assert (exec_.returncode, exec_.stdout) == (4, "in\n"), exec_.stderr
        tasks = ctr("task", "ls")
        assert "pod-detached" in tasks.stdout and "RUNNING" in tasks.stdout
        assert ctr("task", "kill", "-s", "SIGKILL", "pod-detached").returncode == 0
        deadline = time.monotonic() + 60
        while "STOPPED" not in ctr("task", "ls").stdout and time.monotonic() < deadline:
            time.sleep(0.5)
        assert ctr("task", "delete", "pod-detached").returncode == 0
    finally:
        ctr("task", "delete", "-f", "pod-detached")
        ctr("container", "delete", "pod-detached")
    assert wait_gone(kata) == []
    state = kata.containerd.in_namespace("sh", "-c", "ls -A /run/vc/vm /run/vc/sbs 2>/dev/null")
    assert "pod-detached" not in state.stdout
    mounts = Path(f"/proc/{kata.containerd.process.pid}/mountinfo").read_text()  # type: ignore[union-attr]
    assert "pod-detached" not in mounts
    leftovers = [p for p in Path("/sys/fs/cgroup").glob("*/**/*pod-detached*")]
    assert leftovers == []


def test_two_pods_at_once(kata: Kata) -> None:
    def run(name: str) -> tuple[int, str]:
        done = kata.run(name, "sh", "-c", f"echo {name}")
        return done.returncode, done.stdout

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, ["pod-a", "pod-b"]))
    assert results == [(0, "pod-a\n"), (0, "pod-b\n")]
    assert wait_gone(kata) == []
