"""AgentService RPCs about the guest itself: clock, entropy, CPU and memory hotplug, swap."""

from __future__ import annotations

from google.protobuf import empty_pb2

from pykata.agent import cpuset, guest, swap
from pykata.agent.sandbox import Sandbox
from pykata.protocols import agent_pb2


class GuestHandlers:
    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    async def SetGuestDateTime(self, req: agent_pb2.SetGuestDateTimeRequest) -> empty_pb2.Empty:
        guest.set_time(req.Sec, req.Usec)
        return empty_pb2.Empty()

    async def OnlineCPUMem(self, req: agent_pb2.OnlineCPUMemRequest) -> empty_pb2.Empty:
        await guest.online_cpu_mem(
            req.nb_cpus,
            cpu_only=req.cpu_only,
            wait=req.wait,
            after_cpus=lambda: cpuset.widen_containers(self._sandbox.containers.values()),
        )
        return empty_pb2.Empty()

    async def MemHotplugByProbe(self, req: agent_pb2.MemHotplugByProbeRequest) -> empty_pb2.Empty:
        guest.probe_memory(list(req.memHotplugProbeAddr))
        return empty_pb2.Empty()

    async def ReseedRandomDev(self, req: agent_pb2.ReseedRandomDevRequest) -> empty_pb2.Empty:
        guest.reseed_random(req.data)
        return empty_pb2.Empty()

    async def AddSwap(self, req: agent_pb2.AddSwapRequest) -> empty_pb2.Empty:
        await swap.add_by_pci_path(self._sandbox.devices, list(req.PCIPath))
        return empty_pb2.Empty()

    async def AddSwapPath(self, req: agent_pb2.AddSwapPathRequest) -> empty_pb2.Empty:
        await swap.add_by_path(self._sandbox.devices, req.path)
        return empty_pb2.Empty()
