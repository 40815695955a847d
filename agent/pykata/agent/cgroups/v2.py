"""cgroup v2: the unified hierarchy under /sys/fs/cgroup/."""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
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
from pykata.agent.libc import last_error, libc

# Bound on waiting for a freeze state change (steps of 10 ms: 5 s).
FREEZE_STEPS = 500

IN_MODIFY = 0x2
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

# io.stat keys reported as Kata's (v1-shaped) blkio entries.
IO_STAT_BYTES = {"rbytes": "Read", "wbytes": "Write"}
IO_STAT_IOS = {"rios": "Read", "wios": "Write"}


def parse_io_stat(text: str) -> BlkioStats:
    """io.stat lines "MAJ:MIN rbytes=N wbytes=N rios=N wios=N dbytes=N dios=N"."""
    result = BlkioStats()
    for line in text.splitlines():
        dev, *fields = line.split()
        major, _, minor = dev.partition(":")
        values = dict(f.split("=", 1) for f in fields if "=" in f)
        for key, op in IO_STAT_BYTES.items():
            if key in values:
                result.io_service_bytes_recursive.append(
                    BlkioStatsEntry(int(major), int(minor), op, int(values[key]))
                )
        for key, op in IO_STAT_IOS.items():
            if key in values:
                result.io_serviced_recursive.append(
                    BlkioStatsEntry(int(major), int(minor), op, int(values[key]))
                )
    return result


class CgroupV2:
    def __init__(self, path: str, root: Path = Path("/sys/fs/cgroup")) -> None:
        self.path = path
        self.root = root

    @property
    def dir(self) -> Path:
        return self.root / self.path.lstrip("/")

    def directories(self) -> list[Path]:
        return [self.dir] if self.dir != self.root and self.dir.is_dir() else []

    def exists(self) -> bool:
        return self.dir.is_dir()

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.dir / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    async def freeze(self, frozen: bool) -> None:
        (self.dir / "cgroup.freeze").write_text("1" if frozen else "0")
        wanted = f"frozen {1 if frozen else 0}"
        # cgroup.events reports when every task has actually stopped (or resumed).
        for _ in range(FREEZE_STEPS):
            events = (self.dir / "cgroup.events").read_text().splitlines()
            if wanted in events:
                return
            await asyncio.sleep(0.01)
        raise TimeoutError(f"cgroup {self.path} did not reach {wanted!r}")

    def stats(self) -> CgroupStats:
        return CgroupStats(
            cpu_stats=self._cpu(),
            memory_stats=self._memory(),
            pids_stats=self._pids(),
            blkio_stats=self._blkio(),
            hugetlb_stats=self._hugetlb(),
        )

    def _cpu(self) -> CpuStats:
        stat = read_keyed(self.dir / "cpu.stat")
        return CpuStats(
            cpu_usage=CpuUsage(
                total_usage=stat.get("usage_usec", 0) * 1000,
                usage_in_kernelmode=stat.get("system_usec", 0) * 1000,
                usage_in_usermode=stat.get("user_usec", 0) * 1000,
            ),
            throttling_data=ThrottlingData(
                periods=stat.get("nr_periods", 0),
                throttled_periods=stat.get("nr_throttled", 0),
                throttled_time=stat.get("throttled_usec", 0) * 1000,
            ),
        )

    def _memory(self) -> MemoryStats:
        d = self.dir
        stat = read_keyed(d / "memory.stat")
        events = read_keyed(d / "memory.events")
        return MemoryStats(
            cache=stat.get("file", 0),
            usage=MemoryData(
                usage=read_int(d / "memory.current"),
                max_usage=read_int(d / "memory.peak"),
                failcnt=events.get("max", 0),
                limit=read_int(d / "memory.max", UNLIMITED),
            ),
            swap_usage=MemoryData(
                usage=read_int(d / "memory.swap.current"),
                max_usage=read_int(d / "memory.swap.peak"),
                failcnt=read_keyed(d / "memory.swap.events").get("max", 0),
                limit=read_int(d / "memory.swap.max", UNLIMITED),
            ),
            kernel_usage=MemoryData(usage=stat.get("kernel", 0)),
            # v2 is always hierarchical.
            use_hierarchy=True,
            stats=stat,
        )

    def _pids(self) -> PidsStats:
        limit = read_int(self.dir / "pids.max")
        return PidsStats(
            current=read_int(self.dir / "pids.current"), limit=0 if limit == UNLIMITED else limit
        )

    def _blkio(self) -> BlkioStats:
        try:
            return parse_io_stat((self.dir / "io.stat").read_text())
        except FileNotFoundError:
            return BlkioStats()

    def _hugetlb(self) -> dict[str, HugetlbStats]:
        result = {}
        for current in sorted(self.dir.glob("hugetlb.*.current")):
            size = current.name.split(".")[1]
            result[size] = HugetlbStats(
                usage=read_int(current),
                max_usage=read_int(self.dir / f"hugetlb.{size}.max"),
                failcnt=read_keyed(self.dir / f"hugetlb.{size}.events").get("max", 0),
            )
        return result

    def open_oom_notifier(self) -> OomKillWatch:
        return OomKillWatch(self.dir)

    def adopt_oom_notifier(self, state: dict[str, Any]) -> OomKillWatch:
        return OomKillWatch.adopt(self.dir, state)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.dir.rmdir()


class OomKillWatch:
    """Watches the oom_kill counter of memory.events through inotify."""

    def __init__(self, cgroup_dir: Path) -> None:
        self.events = cgroup_dir / "memory.events"
        self.fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise last_error("inotify_init1")
        if libc.inotify_add_watch(self.fd, str(self.events).encode(), IN_MODIFY) < 0:
            error = last_error(f"inotify_add_watch {self.events}")
            os.close(self.fd)
            raise error
        self._seen = read_keyed(self.events).get("oom_kill", 0)

    async def wait(self) -> int:
        """Number of new OOM kills since the last call; 0 once the cgroup is gone."""
        while True:
            try:
                data = os.read(self.fd, 4096)
            except BlockingIOError:
                await readable(self.fd)
                continue
            if not self.events.exists() or _ignored(data):
                return 0
            kills = read_keyed(self.events).get("oom_kill", 0)
            if kills > self._seen:
                new, self._seen = kills - self._seen, kills
                return new

    def close(self) -> None:
        os.close(self.fd)

    def snapshot(self) -> dict[str, Any]:
        """The inotify fd (kept across an upgrade's exec: kills meanwhile stay queued on it)
        and the kills reported so far."""
        return {"fd": self.fd, "seen": self._seen}

    @classmethod
    def adopt(cls, cgroup_dir: Path, state: dict[str, Any]) -> OomKillWatch:
        watch = cls.__new__(cls)
        watch.events = cgroup_dir / "memory.events"
        watch.fd = int(state["fd"])
        os.set_inheritable(watch.fd, False)
        watch._seen = int(state["seen"])
        return watch


def _ignored(data: bytes) -> bool:
    """True if the inotify events say the watch went away (IN_IGNORED: file removed)."""
    offset = 0
    while offset + 16 <= len(data):
        _, mask, _, name_len = struct.unpack_from("iIII", data, offset)
        if mask & 0x8000:
            return True
        offset += 16 + name_len
    return False
