"""File-system calls that may never return, kept off the event loop and bounded.

A stat or umount on a virtio-fs share whose daemon died waits in the guest kernel for an
answer that never comes. Run on the event loop, it would stop the whole agent (PID 1 has one
thread serving every RPC); run in a thread of its own, only that thread waits and the RPC
answers DEADLINE_EXCEEDED. A dedicated daemon thread per call, not the default executor: a
call that never returns must not use up a shared pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

from pykata.agent.errors import DeadlineExceeded

T = TypeVar("T")


async def bounded(call: Callable[[], T], seconds: float, what: str) -> T:
    loop = asyncio.get_running_loop()
    result: asyncio.Future[T] = loop.create_future()

    def settle(value: T | None, error: BaseException | None) -> None:
        if result.done():  # the caller gave up waiting
            return
        if error is not None:
            result.set_exception(error)
        else:
            result.set_result(value)  # type: ignore[arg-type]

    def run() -> None:
        value: T | None = None
        error: BaseException | None = None
        try:
            value = call()
        except BaseException as exc:
            error = exc
        # A loop that closed meanwhile has nobody left to answer.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, value, error)

    threading.Thread(target=run, name=f"blocking: {what}", daemon=True).start()
    try:
        return await asyncio.wait_for(asyncio.shield(result), seconds)
    except TimeoutError:
        raise DeadlineExceeded(
            f"{what} did not finish within {seconds:g}s (a shared file system not answering?); "
            "it goes on in the background"
        ) from None
