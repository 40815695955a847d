"""AgentService RPCs about the sandbox as a whole: create, destroy, describe."""

from __future__ import annotations

import os

from google.protobuf import empty_pb2

from pykata.agent import guest
from pykata.agent.rpc.convert.storages import storage_specs
from pykata.agent.sandbox import KernelModule, Sandbox
from pykata.agent.version import VERSION
from pykata.protocols import agent_pb2


class SandboxHandlers:
    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    async def CreateSandbox(self, req: agent_pb2.CreateSandboxRequest) -> empty_pb2.Empty:
        await self._sandbox.create(
            sandbox_id=req.sandbox_id,
            hostname=req.hostname,
            dns=list(req.dns),
            storages=storage_specs(req.storages),
            sandbox_pidns=req.sandbox_pidns,
            kernel_modules=[KernelModule(m.name, list(m.parameters)) for m in req.kernel_modules],
            guest_hook_path=req.guest_hook_path,
        )
        return empty_pb2.Empty()

    async def DestroySandbox(self, req: agent_pb2.DestroySandboxRequest) -> empty_pb2.Empty:
        await self._sandbox.destroy()
        # The agent stops (or powers off) after this reply has gone out.
        self._sandbox.destroyed.set()
        return empty_pb2.Empty()

    async def GetGuestDetails(
        self, req: agent_pb2.GuestDetailsRequest
    ) -> agent_pb2.GuestDetailsResponse:
        details = guest.details(
            mem_block_size=req.mem_block_size, mem_hotplug_probe=req.mem_hotplug_probe
        )
        return agent_pb2.GuestDetailsResponse(
            mem_block_size_bytes=details.mem_block_size,
            support_mem_hotplug_probe=details.mem_hotplug_probe,
            agent_details=agent_pb2.AgentDetails(
                version=VERSION,
                init_daemon=os.getpid() == 1,
                device_handlers=[],
                storage_handlers=self._sandbox.storages.driver_names,
                supports_seccomp=details.seccomp,
            ),
        )
