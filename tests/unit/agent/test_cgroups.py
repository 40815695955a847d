"""cgroup v1/v2 statistics and OOM watching, from files in the kernel's formats."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pykata.agent.cgroups import open_cgroup
from pykata.agent.cgroups.stats import UNLIMITED, BlkioStatsEntry, network_stats
from pykata.agent.cgroups.v1 import NS_PER_TICK, CgroupV1, parse_blkio
from pykata.agent.cgroups.v2 import CgroupV2, parse_io_stat


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def v1_root(tmp_path: Path) -> Path:
    c = "kata/c1"
    write(
        tmp_path,
        {
            f"cpuacct/{c}/cpuacct.usage": "123456789\n",
            f"cpuacct/{c}/cpuacct.usage_percpu": "100000000 23456789 \n",
            f"cpuacct/{c}/cpuacct.stat": "user 7\nsystem 3\n",
            f"cpu/{c}/cpu.stat": "nr_periods 10\nnr_throttled 2\nthrottled_time 5000\n",
            f"memory/{c}/memory.usage_in_bytes": "4096000\n",
            f"memory/{c}/memory.max_usage_in_bytes": "8192000\n",
            f"memory/{c}/memory.failcnt": "4\n",
            f"memory/{c}/memory.limit_in_bytes": "9223372036854771712\n",
            f"memory/{c}/memory.memsw.usage_in_bytes": "4096000\n",
            f"memory/{c}/memory.memsw.limit_in_bytes": "67108864\n",
            f"memory/{c}/memory.kmem.usage_in_bytes": "1024\n",
            f"memory/{c}/memory.use_hierarchy": "1\n",
            f"memory/{c}/memory.stat": "cache 8192\nrss 4096\ntotal_cache 8192\n",
            f"pids/{c}/pids.current": "3\n",
            f"pids/{c}/pids.max": "max\n",
            f"blkio/{c}/blkio.throttle.io_service_bytes": (
                "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\nTotal 12288\n"
            ),
            f"blkio/{c}/blkio.throttle.io_serviced": "8:0 Read 1\n8:0 Write 2\nTotal 3\n",
            f"blkio/{c}/blkio.sectors_recursive": "8:0 24\n",
            f"hugetlb/{c}/hugetlb.2MB.usage_in_bytes": "2097152\n",
            f"hugetlb/{c}/hugetlb.2MB.max_usage_in_bytes": "4194304\n",
            f"hugetlb/{c}/hugetlb.2MB.failcnt": "1\n",
        },
    )
    return tmp_path


def test_v1_stats(v1_root: Path) -> None:
    cgroup = open_cgroup("/kata/c1", v1_root)
    assert isinstance(cgroup, CgroupV1)
    stats = cgroup.stats()
    usage = stats.cpu_stats.cpu_usage
    assert usage.total_usage == 123456789
    assert usage.percpu_usage == [100000000, 23456789]
    assert (usage.usage_in_usermode, usage.usage_in_kernelmode) == (
        7 * NS_PER_TICK,
        3 * NS_PER_TICK,
    )
    assert stats.cpu_stats.throttling_data.throttled_periods == 2
    assert stats.cpu_stats.throttling_data.throttled_time == 5000
    memory = stats.memory_stats
    assert (memory.usage.usage, memory.usage.max_usage, memory.usage.failcnt) == (
        4096000,
        8192000,
        4,
    )
    assert memory.usage.limit == UNLIMITED
    assert memory.swap_usage.limit == 67108864
    assert memory.kernel_usage.usage == 1024
    assert memory.cache == 8192
    assert memory.use_hierarchy
    assert memory.stats["rss"] == 4096
    assert (stats.pids_stats.current, stats.pids_stats.limit) == (3, 0)
    assert stats.blkio_stats.io_service_bytes_recursive == [
        BlkioStatsEntry(8, 0, "Read", 4096),
        BlkioStatsEntry(8, 0, "Write", 8192),
        BlkioStatsEntry(8, 0, "Sync", 0),
    ]
    assert stats.blkio_stats.sectors_recursive == [BlkioStatsEntry(8, 0, "", 24)]
    huge = stats.hugetlb_stats["2MB"]
    assert (huge.usage, huge.max_usage, huge.failcnt) == (2097152, 4194304, 1)


def test_v1_directories_and_remove(v1_root: Path) -> None:
    (v1_root / "cpu,cpuacct").mkdir()
    cgroup = CgroupV1("/kata/c1", v1_root)
    for d in cgroup.directories():
        for f in d.iterdir():
            f.unlink()
    assert {d.parent.parent.name for d in cgroup.directories()} == {
        "blkio",
        "cpu",
        "cpuacct",
        "hugetlb",
        "memory",
        "pids",
    }
    cgroup.remove()
    assert cgroup.directories() == []
    assert not cgroup.exists()


def test_v1_missing_controllers_give_zeroes(tmp_path: Path) -> None:
    (tmp_path / "memory" / "c").mkdir(parents=True)
    stats = CgroupV1("/c", tmp_path).stats()
    assert stats.cpu_stats.cpu_usage.total_usage == 0
    assert stats.hugetlb_stats == {}


def test_parse_blkio_skips_total_and_garbage() -> None:
    assert parse_blkio("Total 5\n\n253:1 Async 9\n") == [BlkioStatsEntry(253, 1, "Async", 9)]


@pytest.fixture
def v2_root(tmp_path: Path) -> Path:
    write(
        tmp_path,
        {
            "cgroup.controllers": "cpuset cpu io memory hugetlb pids\n",
            "kata/c1/cpu.stat": (
                "usage_usec 2000\nuser_usec 1500\nsystem_usec 500\n"
                "nr_periods 4\nnr_throttled 1\nthrottled_usec 30\n"
            ),
            "kata/c1/memory.current": "1048576\n",
            "kata/c1/memory.peak": "2097152\n",
            "kata/c1/memory.max": "max\n",
            "kata/c1/memory.events": "low 0\nhigh 0\nmax 6\noom 1\noom_kill 1\n",
            "kata/c1/memory.swap.current": "0\n",
            "kata/c1/memory.swap.max": "0\n",
            "kata/c1/memory.stat": "anon 4096\nfile 8192\nkernel 512\n",
            "kata/c1/pids.current": "2\n",
            "kata/c1/pids.max": "100\n",
            "kata/c1/io.stat": "8:16 rbytes=1024 wbytes=2048 rios=3 wios=4 dbytes=0 dios=0\n",
            "kata/c1/hugetlb.1GB.current": "0\n",
            "kata/c1/hugetlb.1GB.max": "max\n",
            "kata/c1/hugetlb.1GB.events": "max 2\n",
            "kata/c1/cgroup.procs": "10\n11\n",
        },
    )
    return tmp_path


def test_v2_stats(v2_root: Path) -> None:
    cgroup = open_cgroup("kata/c1", v2_root)
    assert isinstance(cgroup, CgroupV2)
    stats = cgroup.stats()
    usage = stats.cpu_stats.cpu_usage
    assert (usage.total_usage, usage.usage_in_usermode, usage.usage_in_kernelmode) == (
        2_000_000,
        1_500_000,
        500_000,
    )
    assert stats.cpu_stats.throttling_data.throttled_time == 30_000
    memory = stats.memory_stats
    assert (memory.usage.usage, memory.usage.max_usage, memory.usage.failcnt) == (
        1048576,
        2097152,
        6,
    )
    assert memory.usage.limit == UNLIMITED
    assert memory.swap_usage.limit == 0
    assert memory.cache == 8192
    assert memory.kernel_usage.usage == 512
    assert memory.stats == {"anon": 4096, "file": 8192, "kernel": 512}
    assert (stats.pids_stats.current, stats.pids_stats.limit) == (2, 100)
    assert stats.blkio_stats.io_service_bytes_recursive == [
        BlkioStatsEntry(8, 16, "Read", 1024),
        BlkioStatsEntry(8, 16, "Write", 2048),
    ]
    assert [e.value for e in stats.blkio_stats.io_serviced_recursive] == [3, 4]
    assert stats.hugetlb_stats["1GB"].max_usage == UNLIMITED
    assert stats.hugetlb_stats["1GB"].failcnt == 2
    assert cgroup.pids() == [10, 11]


def test_parse_io_stat_without_counters() -> None:
    assert parse_io_stat("8:0 dbytes=0\n").io_service_bytes_recursive == []


async def test_v2_oom_watch_counts_new_kills_only(v2_root: Path) -> None:
    events = v2_root / "kata/c1/memory.events"
    watch = CgroupV2("kata/c1", v2_root).open_oom_notifier()
    try:
        waiter = asyncio.ensure_future(watch.wait())
        await asyncio.sleep(0.05)
        events.write_text("low 0\nhigh 3\nmax 6\noom 1\noom_kill 1\n")  # no new kill
        await asyncio.sleep(0.05)
        assert not waiter.done()
        events.write_text("low 0\nhigh 3\nmax 9\noom 3\noom_kill 3\n")
        assert await asyncio.wait_for(waiter, 5) == 2
    finally:
        watch.close()


async def test_v2_oom_watch_ends_when_cgroup_goes(v2_root: Path) -> None:
    events = v2_root / "kata/c1/memory.events"
    watch = CgroupV2("kata/c1", v2_root).open_oom_notifier()
    try:
        waiter = asyncio.ensure_future(watch.wait())
        await asyncio.sleep(0.05)
        events.unlink()
        assert await asyncio.wait_for(waiter, 5) == 0
    finally:
        watch.close()


def test_network_stats(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.write_text(
        "Inter-|   Receive                            |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets"
        " errs drop fifo colls carrier compressed\n"
        "    lo:  1000      10    0    0    0     0          0         0     1000      10"
        "    0    0    0     0       0          0\n"
        "  eth0: 5000      50    1    2    0     0          0         0     7000      70"
        "    3    4    0     0       0          0\n"
    )
    lo, eth0 = network_stats(dev)
    assert (lo.name, lo.rx_bytes, lo.tx_packets) == ("lo", 1000, 10)
    assert (eth0.rx_errors, eth0.rx_dropped, eth0.tx_bytes, eth0.tx_errors, eth0.tx_dropped) == (
        1,
        2,
        7000,
        3,
        4,
    )


async def test_v2_oom_watch_handed_over_keeps_a_kill_that_happened_meanwhile(
    v2_root: Path,
) -> None:
    events = v2_root / "kata/c1/memory.events"
    cgroup = CgroupV2("kata/c1", v2_root)
    watch = cgroup.open_oom_notifier()
    state = watch.snapshot()
    # Between the snapshot and the adoption (the upgrade's exec): the kernel counts a kill.
    events.write_text("low 0\nhigh 3\nmax 9\noom 2\noom_kill 2\n")
    adopted = cgroup.adopt_oom_notifier(state)
    try:
        assert adopted.fd == watch.fd
        assert await asyncio.wait_for(adopted.wait(), 5) == 1
    finally:
        adopted.close()
