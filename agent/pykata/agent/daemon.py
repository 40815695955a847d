"""The agent's run loop: reaper, sandbox and ttRPC server until DestroySandbox or a signal."""

from __future__ import annotations

import asyncio
import signal
import threading
from typing import TYPE_CHECKING

from google.protobuf.internal import api_implementation

from pykata.agent import bootclock, log, pid1
from pykata.agent.config import AgentConfig
from pykata.agent.libc import libc
from pykata.agent.reaper import Reaper
from pykata.agent.rpc import wiring
from pykata.ttrpc import Server

if TYPE_CHECKING:
    from pykata.agent.sandbox import Sandbox
    from pykata.agent.upgrade.restore import Restored

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


async def _serve_ops(
    config: AgentConfig,
    sandbox: Sandbox,
    agent_server: Server,
    restored: Restored | None,
) -> Server:
    """The ops channel (docs/ops.md); its code is loaded only when it is configured."""
    from pykata.agent.ops.runtime import AgentRuntime

    runtime = AgentRuntime(config, sandbox, sandbox.reaper, agent_server)
    status = None
    if restored is not None:
        from pykata.agent.upgrade.manager import restored_status

        state = restored.state
        runtime.started = float(state["started"])
        runtime.generation = int(state["generation"]) + (0 if restored.rolled_back else 1)
        status = restored_status(
            state["upgrade"], runtime.generation, restored.pause, restored.rolled_back
        )
    server = wiring.build_ops_server(runtime, status)
    runtime.ops_server = server
    if restored is not None and "ops" in restored.state["servers"]:
        await server.take_over(restored.state["servers"]["ops"])
    else:
        await _listen(server, config.ops_address)
    return server


async def serve(
    config: AgentConfig,
    modules: threading.Thread | None = None,
    restored: Restored | None = None,
) -> None:
    """Serve until DestroySandbox or a signal; ``restored``: go on where the previous agent
    stopped (an upgrade) instead of starting afresh."""
    reaper = Reaper()
    if restored is not None:
        reaper.restore(restored.state["reaper"])
    reaper.start()
    ttrpc_server = wiring.health_server()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    if not pid1.is_pid1():
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    if restored is not None:
        # The shim's connections and their pending calls: answered once AgentService is
        # routed (below), to the restored sandbox.
        await ttrpc_server.take_over(restored.state["servers"]["agent"])
    else:
        await _listen(ttrpc_server, config.server_addr)
    # The protobuf backend is logged because a guest without libstdc++ silently falls back
    # from upb to pure Python (slower, ~3 MiB more memory).
    ready = {
        "address": config.server_addr,
        "protobuf": api_implementation.Type(),
        "uptime": bootclock.uptime(),
    }
    logger.info("agent ready", extra=ready)
    # The storages of the first requests need the kernel modules PID 1 is still loading
    # (no thread to wait in when there are none: each thread costs a malloc arena).
    loaded = None if modules is None else asyncio.to_thread(pid1.wait_modules, modules)
    sandbox = await wiring.serve_agent(
        ttrpc_server,
        config,
        reaper,
        prerequisite=loaded,
        restore=None if restored is None else restored.state["sandbox"],
    )
    logger.info("agent services ready", extra={"uptime": bootclock.uptime()})
    ops_server = None
    if config.ops_address or restored is not None:
        ops_server = await _serve_ops(config, sandbox, ttrpc_server, restored)
        logger.info("ops channel ready", extra={"address": config.ops_address})
    if restored is not None:
        from pykata.agent.upgrade import package

        restored.readiness.report()
        logger.info("upgrade: serving", extra={"pause_seconds": round(restored.pause, 4)})
        # Its copies of the output buffers and requests are the objects' own now.
        restored.state.clear()
        package.prune(keep=package.running_code())
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
    if ops_server is not None:
        await ops_server.close()
    await sandbox.settle_runtime_probe()
    if not sandbox.destroyed.is_set():
        logger.info("signalled: cleaning the sandbox up before exit")
        await sandbox.destroy()
    for task in (*background, destroyed, stopped):
        task.cancel()
    reaper.stop()


def run(
    config: AgentConfig,
    modules: threading.Thread | None = None,
    restored: Restored | None = None,
) -> int:
    try:
        asyncio.run(serve(config, modules, restored))
        logger.info("agent stopped")
        return 0
    except Exception:
        if restored is not None and not restored.readiness.reported:
            raise  # boot.py rolls back to the previous agent
        logger.exception("agent failed")
        return 1
