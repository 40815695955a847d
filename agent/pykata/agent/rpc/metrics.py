"""AgentService GetMetrics: the agent's and the guest's figures, Prometheus text."""

from __future__ import annotations

from pykata.agent import metrics
from pykata.protocols import agent_pb2


class MetricsHandlers:
    async def GetMetrics(self, req: agent_pb2.GetMetricsRequest) -> agent_pb2.Metrics:
        return agent_pb2.Metrics(metrics=metrics.collect())
