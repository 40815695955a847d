"""GetMetrics from the real agent (a root process): the Rust agent's families, twice, and what
the first scrape costs the agent in RSS."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from pykata.protocols import agent_pb2

# What every guest has; diskstat and filesystem_* need block devices and disk mounts.
FAMILIES = {
    "kata_agent_scrape_count",
    "kata_agent_threads",
    "kata_agent_total_time",
    "kata_agent_total_vm",
    "kata_agent_total_rss",
    "kata_agent_proc_status",
    "kata_agent_io_stat",
    "kata_agent_proc_stat",
    "kata_agent_process_cpu_seconds_total",
    "kata_agent_process_open_fds",
    "kata_agent_process_max_fds",
    "kata_agent_process_resident_memory_bytes",
    "kata_agent_process_virtual_memory_bytes",
    "kata_agent_process_start_time_seconds",
    "kata_guest_load",
    "kata_guest_tasks",
    "kata_guest_cpu_time",
    "kata_guest_vm_stat",
    "kata_guest_netdev_stat",
    "kata_guest_meminfo",
}


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def scrape(agent: Any) -> tuple[str, dict[str, Any]]:
    text = (await agent.GetMetrics(agent_pb2.GetMetricsRequest())).metrics
    return text, {family.name: family for family in text_string_to_metric_families(text)}


async def test_get_metrics_twice(
    agent: Any,
    agent_process: subprocess.Popen[bytes],
    record_property: Callable[[str, object], None],
) -> None:
    # The agent answers Health.Check before it has imported AgentService (serve first); an
    # AgentService call waits for that import, so "before" does not count it.
    await agent.GetGuestDetails(agent_pb2.GuestDetailsRequest())
    before = rss_kib(agent_process.pid)
    first_text, first = await scrape(agent)
    after_first = rss_kib(agent_process.pid)
    second_text, second = await scrape(agent)
    for text in (first_text, second_text):
        for name in FAMILIES:
            assert f"\n# TYPE {name} " in f"\n{text}", name
            assert f"\n# HELP {name} " in f"\n{text}", name
    assert {name.removesuffix("_total") for name in FAMILIES} <= set(second)

    count = second["kata_agent_scrape_count"].samples[0].value
    assert count == first["kata_agent_scrape_count"].samples[0].value + 1
    assert second["kata_agent_threads"].samples[0].value >= 1
    assert second["kata_agent_process_open_fds"].samples[0].value > 3
    rss = second["kata_agent_process_resident_memory_bytes"].samples[0].value
    assert abs(rss / 1024 - rss_kib(agent_process.pid)) < 4096
    meminfo = {s.labels["item"]: s.value for s in second["kata_guest_meminfo"].samples}
    assert meminfo["mem_total"] > meminfo["mem_free"] > 0
    interfaces = {s.labels["interface"] for s in second["kata_guest_netdev_stat"].samples}
    assert "lo" in interfaces

    record_property("agent_rss_kib_before_metrics", before)
    record_property("agent_rss_kib_after_first_metrics", after_first)
    # prometheus_client's metric model and registry plus the collector: well under 2 MiB.
    assert after_first - before < 2048
