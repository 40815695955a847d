"""AgentService RPCs about container lifecycle, resources, stats and OOM events."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING

from google.protobuf import empty_pb2

from pykata.agent.cgroups.stats import network_stats
from pykata.agent.container.bundle import Bundle
from pykata.agent.container.container import Container
from pykata.agent.container.runtime import OciRuntime, detect
from pykata.agent.container.spec import rewrite_spec
from pykata.agent.errors import AlreadyExists, DeadlineExceeded, InvalidArgument
from pykata.agent.rpc import oci
from pykata.agent.rpc.storages import storage_specs
from pykata.agent.validation import validate_container_id, validate_exec_id
from pykata.protocols import agent_pb2

if TYPE_CHECKING:
    from pykata.agent.sandbox import Sandbox

log = logging.getLogger("kata-agent.containers")


class ContainerHandlers:
    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self._runtime: OciRuntime | None = None
        self._runtime_lock = asyncio.Lock()
        self._creating: set[str] = set()

    async def runtime(self) -> OciRuntime:
        """The OCI runtime, detected on first use."""
        async with self._runtime_lock:
            if self._runtime is None:
                self._runtime = await detect(self.sandbox.reaper)
            return self._runtime

    async def CreateContainer(self, request: agent_pb2.CreateContainerRequest) -> empty_pb2.Empty:
        cid = validate_container_id(request.container_id)
        exec_id = validate_exec_id(request.exec_id or cid)
        if not request.HasField("OCI"):
            raise InvalidArgument("CreateContainer needs an OCI spec")
        if cid in self.sandbox.containers or cid in self._creating:
            raise AlreadyExists(f"container {cid} already exists")
        spec = oci.to_dict(request.OCI)
        root = spec.get("root", {}).get("path", "")
        if not root:
            raise InvalidArgument("the OCI spec has no root path")
        self._creating.add(cid)
        try:
            runtime = await self.runtime()
            bundle = Bundle(cid)
            guest_spec = rewrite_spec(
                spec,
                container_id=cid,
                rootfs=bundle.rootfs,
                namespaces=self.sandbox.namespaces,
                sandbox_pidns=request.sandbox_pidns or "pid" in self.sandbox.namespaces,
            )
            storages = await self.sandbox.storages.add(storage_specs(request.storages), cid=cid)
            container = Container(
                cid,
                bundle,
                guest_spec,
                runtime,
                self.sandbox.reaper,
                storages,
                self.sandbox.storages,
                self.sandbox.config.container_pipe_size,
            )
            try:
                bundle.create(root)
                await container.launch(exec_id)
            except BaseException:
                await container.destroy()
                raise
            self.sandbox.containers[cid] = container
        finally:
            self._creating.discard(cid)
        log.info("container created", extra={"container": cid})
        return empty_pb2.Empty()

    async def StartContainer(self, request: agent_pb2.StartContainerRequest) -> empty_pb2.Empty:
        container = self.sandbox.get_container(request.container_id)
        await container.start(self.sandbox.oom_events.put_nowait)
        log.info("container started", extra={"container": container.id})
        return empty_pb2.Empty()

    async def RemoveContainer(self, request: agent_pb2.RemoveContainerRequest) -> empty_pb2.Empty:
        container = self.sandbox.get_container(request.container_id)
        destroy = asyncio.ensure_future(container.destroy())
        if request.timeout:
            # On timeout the teardown keeps going in the background, as in Kata.
            done, _ = await asyncio.wait([destroy], timeout=request.timeout)
            if not done:
                raise DeadlineExceeded(
                    f"removing container {container.id} took longer than {request.timeout}s"
                )
        await destroy
        self.sandbox.containers.pop(container.id, None)
        log.info("container removed", extra={"container": container.id})
        return empty_pb2.Empty()

    async def PauseContainer(self, request: agent_pb2.PauseContainerRequest) -> empty_pb2.Empty:
        await self.sandbox.get_container(request.container_id).pause()
        return empty_pb2.Empty()

    async def ResumeContainer(self, request: agent_pb2.ResumeContainerRequest) -> empty_pb2.Empty:
        await self.sandbox.get_container(request.container_id).resume()
        return empty_pb2.Empty()

    async def UpdateContainer(self, request: agent_pb2.UpdateContainerRequest) -> empty_pb2.Empty:
        container = self.sandbox.get_container(request.container_id)
        await container.update(oci.to_dict(request.resources))
        return empty_pb2.Empty()

    async def StatsContainer(
        self, request: agent_pb2.StatsContainerRequest
    ) -> agent_pb2.StatsContainerResponse:
        container = self.sandbox.get_container(request.container_id)
        # Message constructors take the nested dicts as they are; json_format.ParseDict would
        # cost 0.3 MiB of RSS for the same result.
        response = agent_pb2.StatsContainerResponse(
            cgroup_stats=agent_pb2.CgroupStats(**dataclasses.asdict(container.cgroup.stats()))
        )
        for stats in network_stats():
            response.network_stats.add(**dataclasses.asdict(stats))
        return response

    async def GetOOMEvent(self, request: agent_pb2.GetOOMEventRequest) -> agent_pb2.OOMEvent:
        cid = await self.sandbox.oom_events.get()
        return agent_pb2.OOMEvent(container_id=cid)
