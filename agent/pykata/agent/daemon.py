"""The agent's run loop: reaper, sandbox and ttRPC server until DestroySandbox or a signal."""

from __future__ import annotations

import asyncio
import signal
import threading

from google.protobuf.internal import api_implementation

from pykata.agent import bootclock, log, pid1
from pykata.agent.config import AgentConfig
from pykata.agent.libc import libc
from pykata.agent.reaper import Reaper
from pykata.agent.rpc import wiring
from pykata.ttrpc import Server

logger = log.get("main")

# ~10 s of retries, often: the vsock transport module loads meanwhile in a fresh guest.
LISTEN_ATTEMPTS = 200
LISTEN_RETRY_DELAY = 0.05
# After DestroySandbox answered: time for the reply to leave before connections close.
REPLY_GRACE = 0.2


async def _listen(server: Server, address: str) -> None:
    for attempt in range(1, LISTEN_ATTEMPTS + 1):
        try:
            await server.listen(address)
            return
        except OSError as exc:
            if attempt == LISTEN_ATTEMPTS:
                raise
            if attempt == 1:
                logger.info("cannot listen yet", extra={"address": address, "error": str(exc)})
            await asyncio.sleep(LISTEN_RETRY_DELAY)


def release_startup_memory() -> None:
    """Return the heap pages that starting up freed to the kernel (0.3 MiB of RSS).

    Imports leave many freed buffers inside the heap; glibc gives back only its top by itself.
    """
    libc.malloc_trim(0)


async def serve(config: AgentConfig, modules: threading.Thread | None = None) -> None:
    reaper = Reaper()
    reaper.start()
    ttrpc_server = wiring.health_server()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    if not pid1.is_pid1():
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    await _listen(ttrpc_server, config.server_addr)
    # The protobuf backend is logged because a guest without libstdc++ silently falls back
    # from upb to pure Python (slower, ~3 MiB more memory).
    ready = {
        "address": config.server_addr,
        "protobuf": api_implementation.Type(),
        "uptime": bootclock.uptime(),
    }
    logger.info("agent ready", extra=ready)
    # The storages of the first requests need the kernel modules PID 1 is still loading.
    loaded = asyncio.to_thread(pid1.wait_modules, modules)
    sandbox = await wiring.serve_agent(ttrpc_server, config, reaper, prerequisite=loaded)
    logger.info("agent services ready", extra={"uptime": bootclock.uptime()})
    # Once, in the background: the first CreateContainer awaits it, no request runs it.
    sandbox.start_runtime_probe()
    release_startup_memory()
    background: list[asyncio.Task[None]] = []
    if config.debug_console:
        from pykata.agent import console  # only then: it costs memory

        background.append(asyncio.ensure_future(console.serve(reaper, config.debug_console_vport)))
    destroyed = asyncio.ensure_future(sandbox.destroyed.wait())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({destroyed, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if sandbox.destroyed.is_set():
        await asyncio.sleep(REPLY_GRACE)
    await ttrpc_server.close()
    await sandbox.settle_runtime_probe()
    if not sandbox.destroyed.is_set():
        logger.info("signalled: cleaning the sandbox up before exit")
        await sandbox.destroy()
    for task in (*background, destroyed, stopped):
        task.cancel()
    reaper.stop()


def run(config: AgentConfig, modules: threading.Thread | None = None) -> int:
    try:
        asyncio.run(serve(config, modules))
        logger.info("agent stopped")
        return 0
    except Exception:
        logger.exception("agent failed")
        return 1
