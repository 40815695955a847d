"""gRPC status codes and the typed exceptions that carry them across ttRPC.

Handlers raise a subclass of TtrpcError; the server sends its code and message as the
response status, and the client raises the same subclass again. error_for_status() is the
one place that maps a wire status back to an exception class.
"""

from __future__ import annotations

import asyncio
from enum import IntEnum
from typing import ClassVar


class Code(IntEnum):
    """The gRPC status codes (google.rpc.Code), used as ttRPC response status codes."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class TtrpcError(Exception):
    """An RPC failure with a gRPC status code; the base of one subclass per code."""

    code: ClassVar[Code] = Code.UNKNOWN

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}" if self.message else self.code.name


class Cancelled(TtrpcError):
    code = Code.CANCELLED


class Unknown(TtrpcError):
    code = Code.UNKNOWN


class InvalidArgument(TtrpcError):
    code = Code.INVALID_ARGUMENT


class DeadlineExceeded(TtrpcError):
    code = Code.DEADLINE_EXCEEDED


class NotFound(TtrpcError):
    code = Code.NOT_FOUND


class AlreadyExists(TtrpcError):
    code = Code.ALREADY_EXISTS


class PermissionDenied(TtrpcError):
    code = Code.PERMISSION_DENIED


class ResourceExhausted(TtrpcError):
    code = Code.RESOURCE_EXHAUSTED


class FailedPrecondition(TtrpcError):
    code = Code.FAILED_PRECONDITION


class Aborted(TtrpcError):
    code = Code.ABORTED


class OutOfRange(TtrpcError):
    code = Code.OUT_OF_RANGE


class Unimplemented(TtrpcError):
    code = Code.UNIMPLEMENTED


class Internal(TtrpcError):
    code = Code.INTERNAL


class Unavailable(TtrpcError):
    code = Code.UNAVAILABLE


class DataLoss(TtrpcError):
    code = Code.DATA_LOSS


class Unauthenticated(TtrpcError):
    code = Code.UNAUTHENTICATED


_BY_CODE: dict[int, type[TtrpcError]] = {
    cls.code: cls for cls in TtrpcError.__subclasses__() if cls is not Unknown
}
_BY_CODE[Code.UNKNOWN] = Unknown


def error_for_status(code: int, message: str) -> TtrpcError:
    """The exception for a non-OK wire status; codes outside the enum become Unknown."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return Unknown(f"code {code}: {message}")
    return cls(message)


def status_for_exception(exc: BaseException) -> tuple[Code, str]:
    """The status a server answers for an exception a handler raised.

    Plain OS errors map the way grpc-go (and so containerd's ttrpc) maps Go's stdlib
    errors, so a handler that lets FileNotFoundError escape still gives NOT_FOUND.
    """
    if isinstance(exc, TtrpcError):
        return exc.code, exc.message
    if isinstance(exc, FileNotFoundError):
        return Code.NOT_FOUND, str(exc)
    if isinstance(exc, FileExistsError):
        return Code.ALREADY_EXISTS, str(exc)
    if isinstance(exc, PermissionError):
        return Code.PERMISSION_DENIED, str(exc)
    if isinstance(exc, TimeoutError):
        return Code.DEADLINE_EXCEEDED, str(exc) or "deadline exceeded"
    if isinstance(exc, asyncio.CancelledError):
        return Code.CANCELLED, "cancelled"
    return Code.UNKNOWN, str(exc) or type(exc).__name__
