"""AgentService RPCs that configure the guest network (the pod's network namespace)."""

from __future__ import annotations

from google.protobuf import empty_pb2

from pykata.agent.errors import InvalidArgument
from pykata.agent.network import iptables
from pykata.agent.rpc.convert.network import (
    interface_from_proto,
    interface_to_proto,
    neighbor_from_proto,
    route_from_proto,
    routes_to_proto,
)
from pykata.agent.sandbox import Sandbox
from pykata.protocols import agent_pb2, types_pb2


class NetworkHandlers:
    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    async def UpdateInterface(self, req: agent_pb2.UpdateInterfaceRequest) -> types_pb2.Interface:
        if not req.HasField("interface"):
            raise InvalidArgument("empty update interface request")
        iface = interface_from_proto(req.interface)
        return interface_to_proto(await self._sandbox.network.update_interface(iface))

    async def UpdateRoutes(self, req: agent_pb2.UpdateRoutesRequest) -> agent_pb2.Routes:
        if not req.HasField("routes"):
            raise InvalidArgument("empty update routes request")
        routes = [route_from_proto(r) for r in req.routes.Routes]
        updated = await self._sandbox.network.update_routes(routes)
        return agent_pb2.Routes(Routes=routes_to_proto(updated))

    async def ListInterfaces(self, req: agent_pb2.ListInterfacesRequest) -> agent_pb2.Interfaces:
        found = await self._sandbox.network.list_interfaces()
        return agent_pb2.Interfaces(Interfaces=[interface_to_proto(i) for i in found])

    async def ListRoutes(self, req: agent_pb2.ListRoutesRequest) -> agent_pb2.Routes:
        return agent_pb2.Routes(Routes=routes_to_proto(await self._sandbox.network.list_routes()))

    async def AddARPNeighbors(self, req: agent_pb2.AddARPNeighborsRequest) -> empty_pb2.Empty:
        neighbors = [neighbor_from_proto(n) for n in req.neighbors.ARPNeighbors]
        await self._sandbox.network.add_arp_neighbors(neighbors)
        return empty_pb2.Empty()

    async def GetIPTables(self, req: agent_pb2.GetIPTablesRequest) -> agent_pb2.GetIPTablesResponse:
        data = await iptables.save(self._sandbox.reaper, req.is_ipv6)
        return agent_pb2.GetIPTablesResponse(data=data)

    async def SetIPTables(self, req: agent_pb2.SetIPTablesRequest) -> agent_pb2.SetIPTablesResponse:
        data = await iptables.restore(self._sandbox.reaper, req.is_ipv6, req.data)
        return agent_pb2.SetIPTablesResponse(data=data)
