"""AgentService RPCs about the guest itself: clock, entropy, CPU and memory hotplug."""

from __future__ import annotations

from google.protobuf import empty_pb2

from pykata.agent import guest
from pykata.protocols import agent_pb2


class GuestHandlers:
    async def SetGuestDateTime(self, req: agent_pb2.SetGuestDateTimeRequest) -> empty_pb2.Empty:
        guest.set_time(req.Sec, req.Usec)
        return empty_pb2.Empty()

    async def OnlineCPUMem(self, req: agent_pb2.OnlineCPUMemRequest) -> empty_pb2.Empty:
        await guest.online_cpus_and_memory(req.nb_cpus, cpu_only=req.cpu_only)
        return empty_pb2.Empty()

    async def MemHotplugByProbe(self, req: agent_pb2.MemHotplugByProbeRequest) -> empty_pb2.Empty:
        guest.probe_memory(list(req.memHotplugProbeAddr))
        return empty_pb2.Empty()

    async def ReseedRandomDev(self, req: agent_pb2.ReseedRandomDevRequest) -> empty_pb2.Empty:
        guest.reseed_random(req.data)
        return empty_pb2.Empty()
