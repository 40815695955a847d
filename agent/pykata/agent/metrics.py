"""GetMetrics: the agent's own and the guest's figures in Prometheus text format."""

from __future__ import annotations

import os
import resource


def _line(name: str, value: float, labels: str = "") -> str:
    return f"{name}{{{labels}}} {value}\n" if labels else f"{name} {value}\n"


def agent_metrics() -> str:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    out = [
        "# TYPE kata_agent_process_resident_memory_bytes gauge\n",
        _line("kata_agent_process_resident_memory_bytes", rss),
        "# TYPE kata_agent_process_cpu_seconds_total counter\n",
        _line("kata_agent_process_cpu_seconds_total", usage.ru_utime + usage.ru_stime),
        "# TYPE kata_agent_process_open_fds gauge\n",
        _line("kata_agent_process_open_fds", len(os.listdir("/proc/self/fd"))),
    ]
    return "".join(out)


def guest_metrics() -> str:
    out = ["# TYPE kata_guest_load gauge\n"]
    for name, value in zip(("load1", "load5", "load15"), os.getloadavg(), strict=True):
        out.append(_line("kata_guest_load", value, f'item="{name}"'))
    out.append("# TYPE kata_guest_meminfo gauge\n")
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            fields = rest.split()
            if fields:
                scale = 1024 if fields[1:] == ["kB"] else 1
                item = key.replace("(", "_").replace(")", "")
                out.append(_line("kata_guest_meminfo", int(fields[0]) * scale, f'item="{item}"'))
    return "".join(out)


def collect() -> str:
    return agent_metrics() + guest_metrics()
