"""Status codes to exceptions and back."""

from __future__ import annotations

import asyncio

import pytest

import pykata.ttrpc as ttrpc
from pykata.ttrpc.errors import Code, TtrpcError, error_for_status, status_for_exception


def test_codes_are_the_grpc_codes() -> None:
    assert len(Code) == 17
    assert [int(c) for c in Code] == list(range(17))
    assert (int(Code.UNIMPLEMENTED), int(Code.UNAUTHENTICATED)) == (12, 16)


@pytest.mark.parametrize("code", [c for c in Code if c != Code.OK])
def test_one_exception_class_per_code(code: Code) -> None:
    exc = error_for_status(code, "msg")
    assert type(exc).code == code
    assert exc.message == "msg"
    assert str(exc) == f"{code.name}: msg"
    name = "".join(part.capitalize() for part in code.name.split("_"))
    assert type(exc).__name__ == name
    assert getattr(ttrpc, type(exc).__name__) is type(exc)


def test_unknown_wire_code_keeps_the_number() -> None:
    exc = error_for_status(99, "odd")
    assert exc.code == Code.UNKNOWN
    assert "code 99" in exc.message


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ttrpc.NotFound("x"), Code.NOT_FOUND),
        (FileNotFoundError(2, "no such file"), Code.NOT_FOUND),
        (FileExistsError(17, "exists"), Code.ALREADY_EXISTS),
        (PermissionError(13, "denied"), Code.PERMISSION_DENIED),
        (TimeoutError(), Code.DEADLINE_EXCEEDED),
        (asyncio.CancelledError(), Code.CANCELLED),
        (RuntimeError("boom"), Code.UNKNOWN),
        (ValueError(), Code.UNKNOWN),
    ],
)
def test_status_for_exception(exc: BaseException, code: Code) -> None:
    got, message = status_for_exception(exc)
    assert got == code
    assert message


def test_message_defaults_to_empty() -> None:
    exc = ttrpc.Internal()
    assert isinstance(exc, TtrpcError)
    assert (exc.message, str(exc)) == ("", "INTERNAL")
