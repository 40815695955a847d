"""kata-agent: configuration, logging, init duties, then serve the agent API until
DestroySandbox (then power off as PID 1, exit otherwise).

As PID 1 nothing may escape: an unexpected error is logged and the VM is powered off on
purpose instead of letting the kernel panic on a dead init.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time

import pykata
from pykata.agent import config as agent_config
from pykata.agent import console, log, pid1, server
from pykata.agent.config import AgentConfig
from pykata.agent.reaper import Reaper
from pykata.agent.sandbox import Sandbox
from pykata.ttrpc import Server

logger = log.get("main")

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LISTEN_ATTEMPTS = 20
LISTEN_RETRY_DELAY = 0.5
# After DestroySandbox answered: time for the reply to leave before connections close.
REPLY_GRACE = 0.2


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kata-agent", description="Kata Containers agent")
    parser.add_argument("--version", "-v", action="store_true", help="print the version")
    parser.add_argument("--config", "-c", metavar="FILE", help="TOML configuration file")
    return parser.parse_args(argv)


def announce(config: AgentConfig) -> None:
    logger.info(
        "announce",
        extra={
            "agent-version": pykata.__version__,
            "api-version": pykata.API_VERSION,
            "agent-type": "python",
            "init-daemon": pid1.is_pid1(),
            "config": config.public(),
        },
    )


async def _listen(server: Server, address: str) -> None:
    for attempt in range(1, LISTEN_ATTEMPTS + 1):
        try:
            await server.listen(address)
            return
        except OSError as exc:
            # In a fresh guest the vsock transport module may still be loading.
            if attempt == LISTEN_ATTEMPTS:
                raise
            logger.warning("cannot listen yet", extra={"address": address, "error": str(exc)})
            await asyncio.sleep(LISTEN_RETRY_DELAY)


async def serve(config: AgentConfig) -> None:
    reaper = Reaper()
    reaper.start()
    sandbox = Sandbox(config, reaper)
    ttrpc_server = server.build(sandbox)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    if not pid1.is_pid1():
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    await _listen(ttrpc_server, config.server_addr)
    logger.info("agent ready", extra={"address": config.server_addr})
    background: list[asyncio.Task[None]] = []
    if config.debug_console:
        background.append(asyncio.ensure_future(console.serve(reaper, config.debug_console_vport)))
    destroyed = asyncio.ensure_future(sandbox.destroyed.wait())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({destroyed, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if sandbox.destroyed.is_set():
        await asyncio.sleep(REPLY_GRACE)
    await ttrpc_server.close()
    if not sandbox.destroyed.is_set():
        logger.info("signalled: cleaning the sandbox up before exit")
        await sandbox.destroy()
    for task in (*background, destroyed, stopped):
        task.cancel()
    reaper.stop()


def _run(config: AgentConfig) -> int:
    try:
        asyncio.run(serve(config))
        logger.info("agent stopped")
        return 0
    except Exception:
        logger.exception("agent failed")
        return 1


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    if args.version:
        print(
            f"kata-agent version {pykata.__version__} (api version: {pykata.API_VERSION}, "
            "type: python)"
        )
        return 0
    is_init = pid1.is_pid1()
    if is_init:
        os.environ.setdefault("PATH", DEFAULT_PATH)
        # /proc must be there before the command line can be read.
        with contextlib.suppress(Exception):
            pid1.mount_base()
    config = agent_config.load(
        cmdline_path=agent_config.cmdline_source(is_init, os.environ), config_file=args.config
    )
    log.setup(config.log_level, log_vport=config.log_vport)
    announce(config)
    for warning in config.warnings:
        logger.warning("configuration problem", extra={"problem": warning})
    if not is_init:
        pid1.set_child_subreaper()
        return _run(config)
    try:
        pid1.init(config.cgroup_v2)
        _run(config)
    except BaseException:
        logger.exception("init failed")
    logger.info("powering off")
    pid1.power_off()
    while True:  # PID 1 must never exit: that would panic the kernel
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
