"""grpc.Health: SERVING as soon as the listener is up, and the agent's versions."""

from __future__ import annotations

from pykata.agent.version import API_VERSION, VERSION
from pykata.protocols import health_pb2


class HealthHandlers:
    async def Check(self, request: health_pb2.CheckRequest) -> health_pb2.HealthCheckResponse:
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    async def Version(self, request: health_pb2.CheckRequest) -> health_pb2.VersionCheckResponse:
        return health_pb2.VersionCheckResponse(grpc_version=API_VERSION, agent_version=VERSION)
