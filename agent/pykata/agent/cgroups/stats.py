"""Container cgroup statistics in the shape of Kata's CgroupStats message (plain data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# What Kata reports for "no limit" (the kernel's "max" in v2, a page-rounded 2^63 in v1).
UNLIMITED = 2**64 - 1


@dataclass
class CpuUsage:
    total_usage: int = 0
    percpu_usage: list[int] = field(default_factory=list)
    usage_in_kernelmode: int = 0
    usage_in_usermode: int = 0


@dataclass
class ThrottlingData:
    periods: int = 0
    throttled_periods: int = 0
    throttled_time: int = 0


@dataclass
class CpuStats:
    cpu_usage: CpuUsage = field(default_factory=CpuUsage)
    throttling_data: ThrottlingData = field(default_factory=ThrottlingData)


@dataclass
class MemoryData:
    usage: int = 0
    max_usage: int = 0
    failcnt: int = 0
    limit: int = 0


@dataclass
class MemoryStats:
    cache: int = 0
    usage: MemoryData = field(default_factory=MemoryData)
    swap_usage: MemoryData = field(default_factory=MemoryData)
    kernel_usage: MemoryData = field(default_factory=MemoryData)
    use_hierarchy: bool = False
    stats: dict[str, int] = field(default_factory=dict)


@dataclass
class PidsStats:
    current: int = 0
    limit: int = 0


@dataclass
class BlkioStatsEntry:
    major: int
    minor: int
    op: str
    value: int


@dataclass
class BlkioStats:
    io_service_bytes_recursive: list[BlkioStatsEntry] = field(default_factory=list)
    io_serviced_recursive: list[BlkioStatsEntry] = field(default_factory=list)
    io_queued_recursive: list[BlkioStatsEntry] = field(default_factory=list)
    io_service_time_recursive: list[BlkioStatsEntry] = field(default_factory=list)
    io_wait_time_recursive: list[BlkioStatsEntry] = field(default_factory=list)
    io_merged_recursive: list[BlkioStatsEntry] = field(default_factory=list)
    io_time_recursive: list[BlkioStatsEntry] = field(default_factory=list)
    sectors_recursive: list[BlkioStatsEntry] = field(default_factory=list)


@dataclass
class HugetlbStats:
    usage: int = 0
    max_usage: int = 0
    failcnt: int = 0


@dataclass
class CgroupStats:
    cpu_stats: CpuStats = field(default_factory=CpuStats)
    memory_stats: MemoryStats = field(default_factory=MemoryStats)
    pids_stats: PidsStats = field(default_factory=PidsStats)
    blkio_stats: BlkioStats = field(default_factory=BlkioStats)
    hugetlb_stats: dict[str, HugetlbStats] = field(default_factory=dict)


@dataclass
class NetworkStats:
    name: str
    rx_bytes: int
    rx_packets: int
    rx_errors: int
    rx_dropped: int
    tx_bytes: int
    tx_packets: int
    tx_errors: int
    tx_dropped: int


def read_int(path: Path, default: int = 0) -> int:
    """An integer file; "max" means unlimited; a missing file gives ``default``."""
    try:
        text = path.read_text().strip()
    except (FileNotFoundError, PermissionError):
        return default
    if text == "max":
        return UNLIMITED
    try:
        return int(text)
    except ValueError:
        return default


def read_keyed(path: Path) -> dict[str, int]:
    """A flat keyed file ("key value" per line) such as memory.stat or cpu.stat."""
    result: dict[str, int] = {}
    try:
        lines = path.read_text().splitlines()
    except (FileNotFoundError, PermissionError):
        return result
    for line in lines:
        parts = line.split()
        if len(parts) == 2:
            try:
                result[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return result


def network_stats(proc_net_dev: Path = Path("/proc/net/dev")) -> list[NetworkStats]:
    """Per-interface counters of the guest's network namespace (shared by its containers)."""
    result = []
    for line in proc_net_dev.read_text().splitlines()[2:]:
        name, _, counters = line.partition(":")
        values = [int(v) for v in counters.split()]
        if len(values) < 16:
            continue
        result.append(
            NetworkStats(
                name=name.strip(),
                rx_bytes=values[0],
                rx_packets=values[1],
                rx_errors=values[2],
                rx_dropped=values[3],
                tx_bytes=values[8],
                tx_packets=values[9],
                tx_errors=values[10],
                tx_dropped=values[11],
            )
        )
    return result
