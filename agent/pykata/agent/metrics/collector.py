"""The figures behind GetMetrics, read from /proc at every scrape, as the Rust agent's
families (``src/agent/src/metrics.rs``): names, HELP texts, labels and units.

``Metrics`` is a prometheus_client collector in a private registry (no default collectors).
Only prometheus_client's metric model and registry are imported, by the first scrape: the
package's ``__init__`` imports its HTTP exposition (``http.server``, ``urllib``, ``wsgiref``
and ``ssl``, which the agent blocks), about 7 MiB of RSS; the two modules used here cost under
0.1 MiB. A source that is missing or unreadable (a kernel without task I/O accounting, no
block devices...) only leaves its families out.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from pykata.agent import lazyimport, log
from pykata.agent.metrics.text import encode

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

logger = log.get("metrics")

PROC = "/proc"

Labels = tuple[str, ...]
Row = tuple[Labels, float]
Rows = dict[str, list[Row]]

# name: (help, type, label names). HELP texts are the Rust agent's, word for word.
FAMILIES: dict[str, tuple[str, str, Labels]] = {
    "kata_agent_scrape_count": ("Metrics scrape count", "counter", ()),
    "kata_agent_threads": ("Agent process threads", "gauge", ()),
    "kata_agent_total_time": ("Agent process total time", "gauge", ()),
    "kata_agent_total_vm": ("Agent process total VM size", "gauge", ()),
    "kata_agent_total_rss": ("Agent process total RSS size", "gauge", ()),
    "kata_agent_proc_status": ("Agent process status.", "gauge", ("item",)),
    "kata_agent_io_stat": ("Agent process IO statistics.", "gauge", ("item",)),
    "kata_agent_proc_stat": ("Agent process statistics.", "gauge", ("item",)),
    "kata_agent_process_cpu_seconds_total": (
        "Total user and system CPU time spent in seconds.", "counter", ()
    ),
    "kata_agent_process_open_fds": ("Number of open file descriptors.", "gauge", ()),
    "kata_agent_process_max_fds": ("Maximum number of open file descriptors.", "gauge", ()),
    "kata_agent_process_virtual_memory_bytes": ("Virtual memory size in bytes.", "gauge", ()),
    "kata_agent_process_resident_memory_bytes": ("Resident memory size in bytes.", "gauge", ()),
    "kata_agent_process_start_time_seconds": (
        "Start time of the process since unix epoch in seconds.", "gauge", ()
    ),
    "kata_guest_load": ("Guest system load.", "gauge", ("item",)),
    "kata_guest_tasks": ("Guest system load.", "gauge", ("item",)),
    "kata_guest_cpu_time": ("Guest CPU statistics.", "gauge", ("cpu", "item")),
    "kata_guest_vm_stat": ("Guest virtual memory statistics.", "gauge", ("item",)),
    "kata_guest_netdev_stat": ("Guest net devices statistics.", "gauge", ("interface", "item")),
    "kata_guest_diskstat": ("Disks statistics in system.", "gauge", ("disk", "item")),
    "kata_guest_meminfo": (
        "Statistics about memory usage in the system.", "gauge", ("item",)
    ),
    "kata_guest_filesystem_bytes": (
        "Guest filesystem space usage in bytes.", "gauge", ("mount", "device", "item")
    ),
    "kata_guest_filesystem_inodes": (
        "Guest filesystem inode usage.", "gauge", ("mount", "device", "item")
    ),
}  # fmt: skip

# /proc/self/status keys (values in kB, reported as read) by the Rust agent's item names.
PROC_STATUS = {
    "vmpeak": "VmPeak", "vmsize": "VmSize", "vmlck": "VmLck", "vmpin": "VmPin",
    "vmhwm": "VmHWM", "vmrss": "VmRSS", "rssanon": "RssAnon", "rssfile": "RssFile",
    "rssshmem": "RssShmem", "vmdata": "VmData", "vmstk": "VmStk", "vmexe": "VmExe",
    "vmlib": "VmLib", "vmpte": "VmPTE", "vmswap": "VmSwap", "hugetlbpages": "HugetlbPages",
    "voluntary_ctxt_switches": "voluntary_ctxt_switches",
    "nonvoluntary_ctxt_switches": "nonvoluntary_ctxt_switches",
}  # fmt: skip
IO_STAT = ("rchar", "wchar", "syscr", "syscw", "read_bytes", "write_bytes",
           "cancelled_write_bytes")  # fmt: skip
# /proc/meminfo keys by item; values with a unit are turned into bytes, counts stay counts.
MEMINFO = {
    "mem_total": "MemTotal", "mem_free": "MemFree", "mem_available": "MemAvailable",
    "buffers": "Buffers", "cached": "Cached", "swap_cached": "SwapCached", "active": "Active",
    "inactive": "Inactive", "active_anon": "Active(anon)", "inactive_anon": "Inactive(anon)",
    "active_file": "Active(file)", "inactive_file": "Inactive(file)",
    "unevictable": "Unevictable", "mlocked": "Mlocked", "high_total": "HighTotal",
    "high_free": "HighFree", "low_total": "LowTotal", "low_free": "LowFree",
    "mmap_copy": "MmapCopy", "swap_total": "SwapTotal", "swap_free": "SwapFree",
    "dirty": "Dirty", "writeback": "Writeback", "anon_pages": "AnonPages", "mapped": "Mapped",
    "shmem": "Shmem", "slab": "Slab", "s_reclaimable": "SReclaimable",
    "s_unreclaim": "SUnreclaim", "kernel_stack": "KernelStack", "page_tables": "PageTables",
    "quicklists": "Quicklists", "nfs_unstable": "NFS_Unstable", "bounce": "Bounce",
    "writeback_tmp": "WritebackTmp", "commit_limit": "CommitLimit",
    "committed_as": "Committed_AS", "vmalloc_total": "VmallocTotal",
    "vmalloc_used": "VmallocUsed", "vmalloc_chunk": "VmallocChunk",
    "hardware_corrupted": "HardwareCorrupted", "anon_hugepages": "AnonHugePages",
    "shmem_hugepages": "ShmemHugePages", "shmem_pmd_mapped": "ShmemPmdMapped",
    "cma_total": "CmaTotal", "cma_free": "CmaFree", "hugepages_total": "HugePages_Total",
    "hugepages_free": "HugePages_Free", "hugepages_rsvd": "HugePages_Rsvd",
    "hugepages_surp": "HugePages_Surp", "hugepagesize": "Hugepagesize",
    "direct_map_4k": "DirectMap4k", "direct_map_4M": "DirectMap4M",
    "direct_map_2M": "DirectMap2M", "direct_map_1G": "DirectMap1G", "hugetlb": "Hugetlb",
    "per_cpu": "Percpu", "k_reclaimable": "KReclaimable",
}  # fmt: skip
UNITS = {"kB": 1024, "KB": 1024, "KiB": 1024, "MB": 2**20, "MiB": 2**20, "GB": 2**30,
         "GiB": 2**30, "B": 1}  # fmt: skip
CPU_TIME = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest",
            "guest_nice")  # fmt: skip
NETDEV = ("recv_bytes", "recv_packets", "recv_errs", "recv_drop", "recv_fifo", "recv_frame",
          "recv_compressed", "recv_multicast", "sent_bytes", "sent_packets", "sent_errs",
          "sent_drop", "sent_fifo", "sent_colls", "sent_carrier", "sent_compressed")  # fmt: skip
# After major, minor and name; kernels before 4.18 have no discard fields, before 5.5 no flush.
DISKSTAT = ("reads", "merged", "sectors_read", "time_reading", "writes", "writes_merged",
            "sectors_written", "time_writing", "in_progress", "time_in_progress",
            "weighted_time_in_progress", "discards", "discards_merged", "sectors_discarded",
            "time_discarding", "flushes", "time_flushing")  # fmt: skip
# Filesystems whose usage the Rust agent reports (read-write ones, once per device).
REAL_FS_TYPES = ("ext4", "xfs", "btrfs", "vfat", "overlay")
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


class Metrics:
    """The figures of one /proc tree; ``scrape()`` answers GetMetrics."""

    def __init__(self, proc: str = PROC) -> None:
        self.proc = proc
        self.scrapes = 0
        self._registry: CollectorRegistry | None = None
        self._sources: tuple[Callable[[], Rows], ...] = (
            self._agent_stat, self._agent_status, self._agent_io, self._agent_fds,
            self._loadavg, self._cpu_time, self._vmstat, self._netdev, self._diskstats,
            self._meminfo, self._filesystems,
        )  # fmt: skip

    def scrape(self) -> str:
        if self._registry is None:
            self._registry = _private_registry(self)
        self.scrapes += 1
        return encode(self._registry.collect())

    def collect(self) -> Iterator[Metric]:
        """prometheus_client's collector protocol: the families, read now."""
        from prometheus_client.metrics_core import Metric

        rows: Rows = {"kata_agent_scrape_count": [((), self.scrapes)]}
        for source in self._sources:
            try:
                rows.update(source())
            except (OSError, ValueError, LookupError) as exc:
                extra = {"source": source.__name__, "error": str(exc)}
                logger.debug("metrics source unreadable", extra=extra)
        for name, (documentation, typ, label_names) in FAMILIES.items():
            if not rows.get(name):
                continue
            family = Metric(name, documentation, typ)
            for labels, value in rows[name]:
                family.add_sample(name, dict(zip(label_names, labels, strict=True)), value)
            yield family

    def _read(self, *path: str) -> str:
        with open(os.path.join(self.proc, *path)) as f:
            return f.read()

    # The agent process.

    def _agent_stat(self) -> Rows:
        # Fields after the command, which may hold spaces and parentheses.
        fields = self._read("self", "stat").rpartition(")")[2].split()
        utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
        threads, start, vsize = int(fields[17]), int(fields[19]), int(fields[20])
        rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        tps = os.sysconf("SC_CLK_TCK")
        cpu_seconds = (utime + stime) / tps
        rows: Rows = {
            "kata_agent_threads": [((), threads)],
            "kata_agent_total_time": [((), cpu_seconds)],
            "kata_agent_total_vm": [((), vsize)],
            "kata_agent_total_rss": [((), rss)],
            "kata_agent_proc_stat": [
                (("utime",), utime), (("stime",), stime),
                (("cutime",), cutime), (("cstime",), cstime),
            ],
            "kata_agent_process_cpu_seconds_total": [((), cpu_seconds)],
            "kata_agent_process_virtual_memory_bytes": [((), vsize)],
            "kata_agent_process_resident_memory_bytes": [((), rss)],
        }  # fmt: skip
        try:
            btime = next(
                int(line.split()[1])
                for line in self._read("stat").splitlines()
                if line.startswith("btime ")
            )
        except (OSError, ValueError, IndexError, StopIteration):
            return rows
        rows["kata_agent_process_start_time_seconds"] = [((), btime + start / tps)]
        return rows

    def _agent_status(self) -> Rows:
        status = _key_values(self._read("self", "status"))
        return {
            "kata_agent_proc_status": [
                ((item,), _int(status.get(key, "0"))) for item, key in PROC_STATUS.items()
            ]
        }

    def _agent_io(self) -> Rows:
        io = _key_values(self._read("self", "io"))
        return {"kata_agent_io_stat": [((item,), int(io.get(item, "0"))) for item in IO_STAT]}

    def _agent_fds(self) -> Rows:
        fds = os.listdir(os.path.join(self.proc, "self", "fd"))
        rows: Rows = {"kata_agent_process_open_fds": [((), len(fds))]}
        for line in self._read("self", "limits").splitlines():
            if line.startswith("Max open files"):
                soft = line[len("Max open files") :].split()[0]
                if soft != "unlimited":
                    rows["kata_agent_process_max_fds"] = [((), int(soft))]
        return rows

    # The guest.

    def _loadavg(self) -> Rows:
        load1, load5, load15, tasks = self._read("loadavg").split()[:4]
        running, _, total = tasks.partition("/")
        return {
            "kata_guest_load": [
                (("load1",), float(load1)), (("load5",), float(load5)),
                (("load15",), float(load15)),
            ],
            "kata_guest_tasks": [(("cur",), int(running)), (("max",), int(total))],
        }  # fmt: skip

    def _cpu_time(self) -> Rows:
        """Milliseconds per CPU and in total ("total"), from /proc/stat's cpu lines."""
        tps = os.sysconf("SC_CLK_TCK")
        rows: list[Row] = []
        for line in self._read("stat").splitlines():
            if not line.startswith("cpu"):
                continue
            name, *ticks = line.split()
            cpu = name[3:] or "total"
            ticks += ["0"] * (len(CPU_TIME) - len(ticks))  # older kernels have fewer fields
            rows += [
                ((cpu, item), int(t) * 1000 // tps)
                for item, t in zip(CPU_TIME, ticks, strict=False)
            ]
        return {"kata_guest_cpu_time": rows}

    def _vmstat(self) -> Rows:
        rows: list[Row] = []
        for line in self._read("vmstat").splitlines():
            key, _, value = line.partition(" ")
            if key and value.strip().lstrip("-").isdigit():
                rows.append(((key,), int(value)))
        return {"kata_guest_vm_stat": rows}

    def _netdev(self) -> Rows:
        rows: list[Row] = []
        for line in self._read("net", "dev").splitlines()[2:]:
            interface, _, counters = line.partition(":")
            if not counters:
                continue
            values = counters.split()
            rows += [
                ((interface.strip(), item), int(v)) for item, v in zip(NETDEV, values, strict=False)
            ]
        return {"kata_guest_netdev_stat": rows}

    def _diskstats(self) -> Rows:
        rows: list[Row] = []
        for line in self._read("diskstats").splitlines():
            fields = line.split()
            if len(fields) < 14:
                continue
            name, values = fields[2], fields[3:] + ["0"] * (len(DISKSTAT) + 3 - len(fields))
            rows += [((name, item), int(v)) for item, v in zip(DISKSTAT, values, strict=False)]
        return {"kata_guest_diskstat": rows}

    def _meminfo(self) -> Rows:
        meminfo = _key_values(self._read("meminfo"))
        return {
            "kata_guest_meminfo": [
                ((item,), _bytes(meminfo.get(key, "0"))) for item, key in MEMINFO.items()
            ]
        }

    def _filesystems(self) -> Rows:
        bytes_rows: list[Row] = []
        inode_rows: list[Row] = []
        seen = set()
        for line in self._read("self", "mountinfo").splitlines():
            before, _, after = line.partition(" - ")
            fields, tail = before.split(), after.split()
            if len(fields) < 5 or len(tail) < 3:
                continue
            majmin, mount_point = fields[2], _unescape(fields[4])
            fstype, source, options = tail[0], tail[1], tail[2].split(",")
            if fstype not in REAL_FS_TYPES or "ro" in options or majmin in seen:
                continue
            seen.add(majmin)
            device = _unescape(source).rsplit("/", 1)[-1] or majmin
            try:
                st = os.statvfs(mount_point)
            except OSError as exc:
                extra = {"mount_point": mount_point, "error": str(exc)}
                logger.debug("statfs failed", extra=extra)
                continue
            size, free = st.f_blocks * st.f_frsize, st.f_bfree * st.f_frsize
            for rows, total, left in (
                (bytes_rows, size, free),
                (inode_rows, st.f_files, st.f_ffree),
            ):
                rows += [
                    ((mount_point, device, "total"), total),
                    ((mount_point, device, "used"), max(total - left, 0)),
                    ((mount_point, device, "available"), left),
                ]
        return {
            "kata_guest_filesystem_bytes": bytes_rows,
            "kata_guest_filesystem_inodes": inode_rows,
        }


def _key_values(text: str) -> dict[str, str]:
    """``Key: value [unit]`` lines (status, meminfo, io) as {key: "value [unit]"}."""
    pairs = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            pairs[key.strip()] = value.strip()
    return pairs


def _int(value: str) -> int:
    return int(value.split()[0]) if value.split() else 0


def _bytes(value: str) -> int:
    number, *unit = value.split() or ["0"]
    return int(number) * (UNITS[unit[0]] if unit else 1)


def _unescape(path: str) -> str:
    """mountinfo writes space, tab, newline and backslash as \\ooo."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), path)


def _private_registry(collector: Metrics) -> CollectorRegistry:
    # Only the submodules: the package's __init__ would load the HTTP exposition and ssl.
    lazyimport.defer("prometheus_client")
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
