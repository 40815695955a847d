"""Reaper: exit statuses of children, including orphans reaped before anyone asked."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import pytest

from pykata.agent.reaper import Reaper, exit_code


@pytest.fixture
async def reaper() -> AsyncIterator[Reaper]:
    r = Reaper()
    r.start()
    yield r
    r.stop()


@pytest.mark.parametrize(
    ("status", "code"),
    [(0, 0), (3 << 8, 3), (255 << 8, 255), (signal.SIGKILL, 137), (signal.SIGTERM, 143)],
)
def test_exit_code(status: int, code: int) -> None:
    assert exit_code(status) == code


def test_exit_code_rejects_stopped_status() -> None:
    with pytest.raises(ValueError):
        exit_code(0x137F)  # WIFSTOPPED by SIGSTOP


async def test_run_collects_output_and_code(reaper: Reaper) -> None:
    code, out, err = await reaper.run(["sh", "-c", "cat; echo oops >&2; exit 3"], input=b"hello\n")
    assert (code, out, err) == (3, b"hello\n", b"oops\n")


async def test_run_large_input_and_output(reaper: Reaper) -> None:
    data = os.urandom(1 << 20)
    code, out, _ = await reaper.run(["cat"], input=data)
    assert code == 0
    assert out == data


async def test_run_passes_env(reaper: Reaper) -> None:
    _, out, _ = await reaper.run(["sh", "-c", 'echo "$X"'], env={"PATH": os.defpath, "X": "y"})
    assert out == b"y\n"


async def test_run_signal_death(reaper: Reaper) -> None:
    code, _, _ = await reaper.run(["sh", "-c", "kill -TERM $$"])
    assert code == 143


async def test_run_not_hung_by_grandchild_holding_pipes(reaper: Reaper) -> None:
    code, out, _ = await reaper.run(["sh", "-c", "echo before; sleep 30 & exit 0"])
    assert (code, out) == (0, b"before\n")


async def test_run_timeout_kills(reaper: Reaper) -> None:
    with pytest.raises(TimeoutError):
        await reaper.run(["sleep", "30"], timeout=0.2)


async def test_watch_after_exit_is_not_lost(reaper: Reaper) -> None:
    pid = reaper.spawn(["true"])
    # Let SIGCHLD arrive and the status be reaped before anyone watches the pid.
    for _ in range(200):
        await asyncio.sleep(0.01)
        if pid in reaper._unclaimed:
            break
    assert exit_code(await reaper.watch(pid)) == 0


async def test_watch_shared_by_several_waiters(reaper: Reaper) -> None:
    pid = reaper.spawn(["sh", "-c", "exit 7"])
    a, b = reaper.watch(pid), reaper.watch(pid)
    assert [exit_code(s) for s in await asyncio.gather(a, b)] == [7, 7]


async def test_orphan_of_subreaper_is_reaped(reaper: Reaper) -> None:
    import ctypes

    pr_set_child_subreaper = 36
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) == 0
    try:
        r, w = os.pipe2(os.O_CLOEXEC)
        # The grandchild prints its pid and outlives its parent: it becomes our child.
        pid = reaper.spawn(["sh", "-c", "sh -c 'echo $$; sleep 0.2; exit 5' & exit 0"], stdout=w)
        os.close(w)
        assert exit_code(await reaper.watch(pid)) == 0
        with os.fdopen(r, "rb") as f:
            orphan = int(f.readline())
        assert exit_code(await reaper.watch(orphan)) == 5
    finally:
        libc.prctl(pr_set_child_subreaper, 0, 0, 0, 0)


def test_spawn_resets_ignored_sigpipe() -> None:
    # Python ignores SIGPIPE; children must get the default disposition back.
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = Reaper().spawn(["cat", "/proc/self/status"], stdout=w)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(r) as f:
        ignored = next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))
    assert exit_code(status) == 0
    assert not ignored & (1 << (signal.SIGPIPE - 1))


async def test_run_executable_replaces_path_lookup(reaper: Reaper) -> None:
    # argv[0] stays what the program sees; the file run is ``executable``.
    code, out, _ = await reaper.run(["not-in-path", "-c", 'echo "$0"'], executable="/bin/sh")
    assert (code, out) == (0, b"not-in-path\n")
