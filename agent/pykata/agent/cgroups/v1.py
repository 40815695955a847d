"""cgroup v1: one hierarchy per controller under /sys/fs/cgroup/<controller>/."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

from pykata.agent.cgroups.stats import (
    UNLIMITED,
    BlkioStats,
    BlkioStatsEntry,
    CgroupStats,
    CpuStats,
    CpuUsage,
    HugetlbStats,
    MemoryData,
    MemoryStats,
    PidsStats,
    ThrottlingData,
    read_int,
    read_keyed,
)
from pykata.agent.fdready import readable

# Bound on waiting for a freezer state change (steps of 10 ms: 5 s).
FREEZE_STEPS = 500

# cpuacct.stat counts in USER_HZ ticks.
NS_PER_TICK = 10**9 // os.sysconf("SC_CLK_TCK")

# v1 reports "no limit" as the largest page-aligned signed 64-bit value.
V1_UNLIMITED_FLOOR = 2**63 - 2**20

BLKIO_FILES = {
    "io_service_bytes_recursive": "blkio.throttle.io_service_bytes",
    "io_serviced_recursive": "blkio.throttle.io_serviced",
    "io_queued_recursive": "blkio.io_queued_recursive",
    "io_service_time_recursive": "blkio.io_service_time_recursive",
    "io_wait_time_recursive": "blkio.io_wait_time_recursive",
    "io_merged_recursive": "blkio.io_merged_recursive",
    "io_time_recursive": "blkio.time_recursive",
    "sectors_recursive": "blkio.sectors_recursive",
}


def _limit(value: int) -> int:
    return UNLIMITED if value >= V1_UNLIMITED_FLOOR else value


def parse_blkio(text: str) -> list[BlkioStatsEntry]:
    """Lines "MAJ:MIN Op value" (op-less "MAJ:MIN value" too); the "Total" line is dropped."""
    entries = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) not in (2, 3) or ":" not in parts[0]:
            continue
        major, _, minor = parts[0].partition(":")
        op = parts[1] if len(parts) == 3 else ""
        entries.append(BlkioStatsEntry(int(major), int(minor), op, int(parts[-1])))
    return entries


class CgroupV1:
    def __init__(self, path: str, root: Path = Path("/sys/fs/cgroup")) -> None:
        self.path = path
        self.root = root

    def dir(self, controller: str) -> Path:
        return self.root / controller / self.path.lstrip("/")

    def directories(self) -> list[Path]:
        """Every hierarchy's directory for this cgroup that exists."""
        found = []
        with contextlib.suppress(FileNotFoundError):
            for entry in sorted(self.root.iterdir()):
                if entry.is_symlink():  # "cpu" -> "cpu,cpuacct": the same hierarchy
                    continue
                d = entry / self.path.lstrip("/")
                if entry.is_dir() and d != entry and d.is_dir():
                    found.append(d)
        return found

    def exists(self) -> bool:
        return self.dir("memory").is_dir()

    def pids(self) -> list[int]:
        for controller in ("pids", "freezer", "memory", "cpu"):
            try:
                return [int(p) for p in (self.dir(controller) / "cgroup.procs").read_text().split()]
            except FileNotFoundError:
                continue
        return []

    async def freeze(self, frozen: bool) -> None:
        state = self.dir("freezer") / "freezer.state"
        wanted = "FROZEN" if frozen else "THAWED"
        state.write_text(wanted)
        # FREEZING is transient: write again until every task is stopped.
        for _ in range(FREEZE_STEPS):
            if state.read_text().strip() == wanted:
                return
            await asyncio.sleep(0.01)
            state.write_text(wanted)
        raise TimeoutError(f"cgroup {self.path} did not reach {wanted}")

    def stats(self) -> CgroupStats:
        return CgroupStats(
            cpu_stats=self._cpu(),
            memory_stats=self._memory(),
            pids_stats=self._pids(),
            blkio_stats=self._blkio(),
            hugetlb_stats=self._hugetlb(),
        )

    def _cpu(self) -> CpuStats:
        acct = self.dir("cpuacct")
        try:
            percpu = [int(v) for v in (acct / "cpuacct.usage_percpu").read_text().split()]
        except FileNotFoundError:
            percpu = []
        ticks = read_keyed(acct / "cpuacct.stat")
        throttle = read_keyed(self.dir("cpu") / "cpu.stat")
        return CpuStats(
            cpu_usage=CpuUsage(
                total_usage=read_int(acct / "cpuacct.usage"),
                percpu_usage=percpu,
                usage_in_kernelmode=ticks.get("system", 0) * NS_PER_TICK,
                usage_in_usermode=ticks.get("user", 0) * NS_PER_TICK,
            ),
            throttling_data=ThrottlingData(
                periods=throttle.get("nr_periods", 0),
                throttled_periods=throttle.get("nr_throttled", 0),
                throttled_time=throttle.get("throttled_time", 0),
            ),
        )

    def _memory_data(self, prefix: str) -> MemoryData:
        mem = self.dir("memory")
        return MemoryData(
            usage=read_int(mem / f"{prefix}.usage_in_bytes"),
            max_usage=read_int(mem / f"{prefix}.max_usage_in_bytes"),
            failcnt=read_int(mem / f"{prefix}.failcnt"),
            limit=_limit(read_int(mem / f"{prefix}.limit_in_bytes")),
        )

    def _memory(self) -> MemoryStats:
        mem = self.dir("memory")
        stat = read_keyed(mem / "memory.stat")
        return MemoryStats(
            cache=stat.get("cache", 0),
            usage=self._memory_data("memory"),
            swap_usage=self._memory_data("memory.memsw"),
            kernel_usage=self._memory_data("memory.kmem"),
            use_hierarchy=read_int(mem / "memory.use_hierarchy") == 1,
            stats=stat,
        )

    def _pids(self) -> PidsStats:
        pids = self.dir("pids")
        limit = read_int(pids / "pids.max")
        return PidsStats(
            current=read_int(pids / "pids.current"), limit=0 if limit == UNLIMITED else limit
        )

    def _blkio(self) -> BlkioStats:
        blkio = self.dir("blkio")
        result = BlkioStats()
        for attr, name in BLKIO_FILES.items():
            try:
                text = (blkio / name).read_text()
            except FileNotFoundError:
                continue
            setattr(result, attr, parse_blkio(text))
        return result

    def _hugetlb(self) -> dict[str, HugetlbStats]:
        hugetlb = self.dir("hugetlb")
        result = {}
        for usage in sorted(hugetlb.glob("hugetlb.*.usage_in_bytes")):
            size = usage.name.split(".")[1]
            result[size] = HugetlbStats(
                usage=read_int(usage),
                max_usage=read_int(hugetlb / f"hugetlb.{size}.max_usage_in_bytes"),
                failcnt=read_int(hugetlb / f"hugetlb.{size}.failcnt"),
            )
        return result

    def open_oom_notifier(self) -> OomEventFd:
        return OomEventFd(self.dir("memory"))

    def adopt_oom_notifier(self, state: dict[str, Any]) -> OomEventFd:
        return OomEventFd.adopt(self.dir("memory"), state)

    def remove(self) -> None:
        for d in self.directories():
            with contextlib.suppress(FileNotFoundError):
                d.rmdir()


class OomEventFd:
    """An eventfd the kernel signals on every OOM in a v1 memory cgroup (and on its removal)."""

    def __init__(self, memory_dir: Path) -> None:
        self.memory_dir = memory_dir
        self.fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        control = os.open(memory_dir / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
        try:
            (memory_dir / "cgroup.event_control").write_text(f"{self.fd} {control}")
        except BaseException:
            os.close(self.fd)
            raise
        finally:
            os.close(control)

    async def wait(self) -> int:
        """Number of OOM events since the last call; 0 once the cgroup is gone."""
        while True:
            try:
                count = os.eventfd_read(self.fd)
            except BlockingIOError:
                await readable(self.fd)
                continue
            # Removing the cgroup signals the eventfd too.
            return count if (self.memory_dir / "memory.oom_control").exists() else 0

    def close(self) -> None:
        os.close(self.fd)

    def snapshot(self) -> dict[str, Any]:
        """The eventfd: kept across an upgrade's exec, its registration and any count the
        kernel adds meanwhile stay."""
        return {"fd": self.fd}

    @classmethod
    def adopt(cls, memory_dir: Path, state: dict[str, Any]) -> OomEventFd:
        watch = cls.__new__(cls)
        watch.memory_dir = memory_dir
        watch.fd = int(state["fd"])
        os.set_inheritable(watch.fd, False)
        return watch
