"""ServiceSet.register: a handler method named like an RPC the service lacks is refused."""

from __future__ import annotations

import pytest

from pykata.protocols import health_pb2
from pykata.protocols.health_pb2 import CheckRequest, HealthCheckResponse
from pykata.ttrpc.services import ServiceSet

HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]


class Misspelt:
    async def Chek(self, request: CheckRequest) -> HealthCheckResponse:
        return HealthCheckResponse()


class WithHelpers:
    async def Check(self, request: CheckRequest) -> HealthCheckResponse:
        return await self._answer()

    async def _answer(self) -> HealthCheckResponse:
        return HealthCheckResponse()

    async def lowercase_helper(self) -> None:
        pass

    def Describe(self) -> str:
        return "not a coroutine: never mistaken for an RPC"


def test_a_coroutine_named_like_an_rpc_the_service_lacks_is_refused() -> None:
    services = ServiceSet()
    with pytest.raises(ValueError, match=r"grpc\.Health: handler .* has Chek, which is not an RPC"):
        services.register(HEALTH, WithHelpers(), Misspelt())
    # Nothing of the refused registration is left behind: it can be done again, right.
    services.register(HEALTH, WithHelpers())
    assert set(services.services["grpc.Health"]) == {"Check"}


def test_helpers_that_are_private_lowercase_or_plain_are_fine() -> None:
    services = ServiceSet()
    services.register(HEALTH, WithHelpers())
    assert set(services.services["grpc.Health"]) == {"Check"}
    assert "is not implemented" in services.unrouted("grpc.Health", "Version")
