"""Exit codes scripts can rely on, and the errors that carry them."""

from __future__ import annotations

from enum import IntEnum

from pykata.ttrpc.errors import Code, TtrpcError


class ExitCode(IntEnum):
    OK = 0
    RPC_ERROR = 1  # the agent answered with a non-OK status
    USAGE = 2  # bad arguments, unknown method, malformed JSON body
    CONNECTION = 3  # could not reach the agent, lost it, or it answered UNAVAILABLE
    # `run`/`exec` return the process's exit code; their own failures use 125 like podman
    # and docker, so they cannot be mistaken for the exit code of the command itself.
    RUN_FAILED = 125


class CtlError(Exception):
    exit_code = ExitCode.USAGE


class UsageError(CtlError):
    exit_code = ExitCode.USAGE


class ConnectionFailure(CtlError):
    exit_code = ExitCode.CONNECTION


def rpc_exit_code(error: TtrpcError) -> ExitCode:
    # The client reports a dropped connection as UNAVAILABLE, and agents use it for "retry
    # later": either way the call may succeed when tried again, unlike other errors.
    return ExitCode.CONNECTION if error.code == Code.UNAVAILABLE else ExitCode.RPC_ERROR
