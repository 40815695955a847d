"""A grpc.Health handler whose behaviour each request scripts, for server tests."""

from __future__ import annotations

import asyncio

from pykata.protocols import health_pb2
from pykata.ttrpc.errors import error_for_status

HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]


class ScriptedHealth:
    """Check's CheckRequest.service says what to do: "" answers SERVING at once,
    "sleep:S" answers after S seconds, "block" waits until cancelled, "raise:CODE:MSG"
    raises that status, "crash" raises a plain exception."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self._changed = asyncio.Condition()

    async def wait_started(self, script: str) -> None:
        async with asyncio.timeout(5), self._changed:
            await self._changed.wait_for(lambda: script in self.started)

    async def wait_cancelled(self, script: str) -> None:
        async with asyncio.timeout(5), self._changed:
            await self._changed.wait_for(lambda: script in self.cancelled)

    async def _record(self, log: list[str], script: str) -> None:
        async with self._changed:
            log.append(script)
            self._changed.notify_all()

    async def Check(self, request: health_pb2.CheckRequest) -> health_pb2.HealthCheckResponse:
        script = request.service
        await self._record(self.started, script)
        try:
            if script.startswith("sleep:"):
                await asyncio.sleep(float(script.split(":")[1]))
            elif script == "block":
                await asyncio.Event().wait()
            elif script.startswith("raise:"):
                _, code, message = script.split(":", 2)
                raise error_for_status(int(code), message)
            elif script == "crash":
                raise RuntimeError("handler bug")
        except asyncio.CancelledError:
            # Recorded without awaiting: a cancelled task must not block on the condition.
            self.cancelled.append(script)
            asyncio.get_running_loop().create_task(self._notify())
            raise
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def Version(self, request: health_pb2.CheckRequest) -> health_pb2.VersionCheckResponse:
        """Echoes CheckRequest.service as agent_version; "big:N" answers N bytes instead."""
        text = request.service
        if text.startswith("big:"):
            text = "x" * int(text[4:])
        return health_pb2.VersionCheckResponse(grpc_version="test", agent_version=text)
