"""`kata-agent-ctl connect`: call RPCs given as `-c 'Method json://{...}'`, print JSON replies."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from pykata.host.ctl.body import parse_command
from pykata.host.ctl.calls import run_commands
from pykata.host.ctl.errors import ExitCode
from pykata.host.ctl.session import open_session
from pykata.host.ctl.shell import Shell


def connect(address: str, timeout: float, commands: list[str], interactive: bool) -> ExitCode:
    # Every command is parsed before connecting: a typo fails fast with USAGE, calls nothing.
    calls = [parse_command(command) for command in commands]
    with asyncio.Runner() as runner:
        stack = AsyncExitStack()
        session = runner.run(stack.enter_async_context(open_session(address, timeout)))
        try:
            status = runner.run(run_commands(session, calls))
            if interactive and status == ExitCode.OK:
                status = Shell(runner, session).loop()
        finally:
            runner.run(stack.aclose())
    return status
