"""Calling one method or a list of them and printing the JSON replies."""

from __future__ import annotations

import sys

from google.protobuf.message import Message

from pykata.host.ctl.body import format_response
from pykata.host.ctl.errors import ExitCode, rpc_exit_code
from pykata.host.ctl.methods import Method
from pykata.host.ctl.session import Session
from pykata.ttrpc.errors import TtrpcError


async def call_and_print(session: Session, method: Method, request: Message) -> ExitCode:
    try:
        response = await session.call(method, request)
    except TtrpcError as exc:
        print(f"{method.name}: {exc}", file=sys.stderr)
        return rpc_exit_code(exc)
    print(format_response(response), flush=True)
    return ExitCode.OK


async def run_commands(session: Session, calls: list[tuple[Method, Message]]) -> ExitCode:
    """Calls in order and stops at the first failure, like a script with `set -e`."""
    for method, request in calls:
        status = await call_and_print(session, method, request)
        if status != ExitCode.OK:
            return status
    return ExitCode.OK
