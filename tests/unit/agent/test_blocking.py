"""A file-system call that never returns must not stop the event loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from pykata.agent.blocking import bounded
from pykata.agent.errors import DeadlineExceeded


async def test_a_call_that_never_returns_answers_deadline_exceeded_and_the_loop_goes_on() -> None:
    stuck = threading.Event()
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.ensure_future(tick())
    with pytest.raises(DeadlineExceeded, match=r"removing a bundle did not finish within 0\.3s"):
        await bounded(lambda: stuck.wait(), 0.3, "removing a bundle")
    assert ticks > 10  # the loop served others meanwhile
    ticker.cancel()
    stuck.set()  # the thread finishes late; nothing is left to answer


async def test_result_and_errors_come_back() -> None:
    assert await bounded(lambda: 42, 5, "answer") == 42

    def fails() -> None:
        raise OSError(16, "busy")

    with pytest.raises(OSError, match="busy"):
        await bounded(fails, 5, "failing")
