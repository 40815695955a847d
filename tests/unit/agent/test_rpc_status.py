"""The agent's errors reach the wire as their gRPC code, message intact."""

from __future__ import annotations

import inspect

import pytest

from pykata.agent import errors
from pykata.agent.container.runtime import RuntimeFailure
from pykata.agent.rpc.status import CODES, Translating, to_status
from pykata.ttrpc import errors as status


def _kinds() -> list[type[errors.AgentError]]:
    found: list[type[errors.AgentError]] = []
    pending = [errors.AgentError]
    while pending:
        for sub in pending.pop().__subclasses__():
            found.append(sub)
            pending.append(sub)
    return found


def test_every_kind_the_agent_declares_has_a_code() -> None:
    declared = {
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.AgentError) and cls is not errors.AgentError
    }
    assert declared == set(CODES)


EXPECTED = {
    errors.InvalidArgument: status.Code.INVALID_ARGUMENT,
    errors.NotFound: status.Code.NOT_FOUND,
    errors.AlreadyExists: status.Code.ALREADY_EXISTS,
    errors.FailedPrecondition: status.Code.FAILED_PRECONDITION,
    errors.Unavailable: status.Code.UNAVAILABLE,
    errors.Unimplemented: status.Code.UNIMPLEMENTED,
    errors.DeadlineExceeded: status.Code.DEADLINE_EXCEEDED,
    errors.Internal: status.Code.INTERNAL,
}


def test_the_codes() -> None:
    assert {kind: cls.code for kind, cls in CODES.items()} == EXPECTED


@pytest.mark.parametrize("kind", _kinds(), ids=lambda k: k.__name__)
def test_every_agent_error_maps_to_its_code_and_keeps_its_message(
    kind: type[errors.AgentError],
) -> None:
    translated = to_status(kind("container c1 not found: 'x'"))
    assert translated.message == "container c1 not found: 'x'"
    assert translated.code is next(EXPECTED[c] for c in kind.__mro__ if c in EXPECTED)


def test_a_refined_error_answers_as_its_kind() -> None:
    assert to_status(RuntimeFailure("crun start failed")).code is status.Code.INTERNAL


def test_the_bare_base_is_unknown() -> None:
    assert to_status(errors.AgentError("?")).code is status.Code.UNKNOWN


class _Handlers:
    async def Fails(self, request: object) -> object:
        raise errors.NotFound(f"no {request}")

    async def Works(self, request: object) -> object:
        return request

    async def _helper(self, request: object) -> object:
        return request

    def Plain(self) -> None:
        pass


async def test_translating_exposes_the_public_coroutines_and_translates_their_errors() -> None:
    wrapped = Translating(_Handlers())
    exposed = {name for name in vars(wrapped) if not name.startswith("_")}
    assert exposed == {"Fails", "Works"}
    assert inspect.iscoroutinefunction(wrapped.Fails)  # type: ignore[attr-defined]
    assert await wrapped.Works("r") == "r"  # type: ignore[attr-defined]
    with pytest.raises(status.NotFound, match="no x") as raised:
        await wrapped.Fails("x")  # type: ignore[attr-defined]
    assert isinstance(raised.value.__cause__, errors.NotFound)


async def test_other_exceptions_pass_through_for_the_server_to_map() -> None:
    class Failing:
        async def Check(self, request: object) -> object:
            raise FileNotFoundError("gone")

    with pytest.raises(FileNotFoundError):
        await Translating(Failing()).Check(None)  # type: ignore[attr-defined]
