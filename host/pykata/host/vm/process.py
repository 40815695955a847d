"""Child processes of a VM: tied to their parent's life, stopped politely then firmly."""

from __future__ import annotations

import asyncio
import ctypes
import signal
import subprocess
import time

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """A ``preexec_fn``: the child gets SIGKILL when the thread that spawned it dies, so
    spawn from a thread that lives as long as the process (the event loop's)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


async def wait_exit(proc: subprocess.Popen[bytes], seconds: float) -> bool:
    """Wait up to ``seconds`` for ``proc`` to exit; True when it did."""
    deadline = time.monotonic() + seconds
    while proc.poll() is None:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def terminate(proc: subprocess.Popen[bytes], exits_alone: float, grace: float = 5.0) -> None:
    """Give ``proc`` ``exits_alone`` seconds, then SIGTERM and ``grace`` seconds, then SIGKILL."""
    if await wait_exit(proc, exits_alone):
        return
    proc.terminate()
    if not await wait_exit(proc, grace):
        proc.kill()
        await wait_exit(proc, 5.0)
    if proc.stdout is not None:
        proc.stdout.close()
