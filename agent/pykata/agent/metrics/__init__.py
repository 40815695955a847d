"""GetMetrics: the agent's own and the guest's figures in Prometheus text format.

The families, labels and units are the Rust agent's, so kata-monitor, which scrapes GetMetrics
through the shim, sees the same series: ``kata_agent_*`` for the agent process (plus the
standard process figures as ``kata_agent_process_*``, the names the shim gives an agent's
``process_*`` families) and ``kata_guest_*`` for the guest.

Nothing but this module is imported at agent start: the collector (``collector.py``) and
prometheus_client load on the first scrape.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pykata.agent.metrics.collector import Metrics

_metrics: Metrics | None = None


def collect() -> str:
    """GetMetrics' text for this guest (the agent's one scrape counter lives here)."""
    global _metrics
    if _metrics is None:
        from pykata.agent.metrics.collector import Metrics

        _metrics = Metrics()
    return _metrics.scrape()
