"""GetMetrics' text: the Rust agent's families read from a fake /proc tree and from this host's,
parsed back with prometheus_client's text parser; prometheus_client stays out of agent start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from pykata.agent.metrics.collector import FAMILIES, MEMINFO, PROC_STATUS, Metrics
from pykata.agent.metrics.text import encode

TPS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
# Families a host or guest always has; diskstat and filesystem_* need disks and mounts.
ALWAYS = set(FAMILIES) - {
    "kata_guest_diskstat",
    "kata_guest_filesystem_bytes",
    "kata_guest_filesystem_inodes",
}

STAT = (
    "cpu  100 2 30 400 5 6 7 8 9 10\n"
    "cpu0 60 1 20 200 5 6 7 8 9 10\n"
    "cpu1 40 1 10 200 0 0 0 0 0 0\n"
    "intr 12345 0 0\n"
    "btime 1700000000\n"
    "processes 4242\n"
)
MEMINFO_TEXT = (
    "MemTotal:        2000000 kB\n"
    "MemFree:         1000000 kB\n"
    "MemAvailable:    1500000 kB\n"
    "Active(anon):       1234 kB\n"
    "HugePages_Total:       3\n"
    "Hugepagesize:       2048 kB\n"
    "DirectMap4M:           0 kB\n"
)
NET_DEV = (
    "Inter-|   Receive                                                |  Transmit\n"
    " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs"
    " drop fifo colls carrier compressed\n"
    "    lo:     100       2    0    0    0     0          0         0      100       2    0"
    "    0    0     0       0          0\n"
    "  eth0: 5000 40 1 2 3 4 5 6 7000 50 7 8 9 10 11 12\n"
)
DISKSTATS = (
    # 4.18+ (discards), 5.5+ (flushes), and an older kernel's 14 fields.
    " 254       0 vda 10 1 200 30 20 2 400 50 0 60 90 3 0 24 5 7 8\n"
    "   7       0 loop0 5 0 10 1 0 0 0 0 0 2 1\n"
)


def write_tree(root: Path, mount_dir: Path) -> Path:
    """A /proc tree with every file the collector reads."""
    files = {
        "self/stat": (
            "42 (kata agent) x) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 4 0 "
            "1000 123456789 2000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0"
        ),
        "self/status": "Name:\tkata-agent\nVmPeak:\t   20000 kB\nVmRSS:\t    8000 kB\n"
        "Threads:\t4\nvoluntary_ctxt_switches:\t77\nnonvoluntary_ctxt_switches:\t5\n",
        "self/io": "rchar: 11\nwchar: 22\nsyscr: 3\nsyscw: 4\nread_bytes: 4096\n"
        "write_bytes: 8192\ncancelled_write_bytes: 0\n",
        "self/limits": "Limit                     Soft Limit           Hard Limit           Units\n"
        "Max open files            1024                 524288               files\n",
        "self/mountinfo": (
            f"20 1 254:1 / {mount_dir} rw,relatime - ext4 /dev/vda1 rw\n"
            f"21 1 254:1 / {mount_dir}/again rw - ext4 /dev/vda1 rw\n"
            "22 1 254:2 / /ro rw - ext4 /dev/vdb ro,relatime\n"
            "23 1 0:5 / /run rw - tmpfs tmpfs rw\n"
            "24 1 254:3 / /gone\\040away rw - xfs /dev/vdc rw\n"
        ),
        "loadavg": "0.50 0.25 0.10 3/128 4242\n",
        "stat": STAT,
        "vmstat": "nr_free_pages 1000\npgfault 123456\nnr_weird -2\n",
        "net/dev": NET_DEV,
        "diskstats": DISKSTATS,
        "meminfo": MEMINFO_TEXT,
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "self/fd").mkdir()
    for fd in ("0", "1", "2", "5"):
        (root / "self/fd" / fd).touch()
    return root


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    mount_dir = tmp_path / "disk"
    mount_dir.mkdir()
    return write_tree(tmp_path / "proc", mount_dir)


def parse(text: str) -> dict[str, Metric]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def values(family: Metric, label: str = "item") -> dict[str, float]:
    return {sample.labels[label]: sample.value for sample in family.samples}


def by(family: Metric, *labels: str) -> dict[tuple[str, ...], float]:
    return {tuple(s.labels[label] for label in labels): s.value for s in family.samples}


def test_every_family_with_help_and_type(proc: Path) -> None:
    text = Metrics(str(proc)).scrape()
    for name, (documentation, typ, _) in FAMILIES.items():
        assert f"# HELP {name} {documentation}\n# TYPE {name} {typ}\n" in text
    # The parser names a counter without its _total, as prometheus_client models counters.
    names = {n.removesuffix("_total") for n in FAMILIES}
    assert set(parse(text)) == names


def test_sample_names_are_their_family_names(proc: Path) -> None:
    """Go's expfmt text parser (the shim's) files a sample under the TYPE line of its name."""
    family = ""
    for line in Metrics(str(proc)).scrape().splitlines():
        if line.startswith("# TYPE "):
            family = line.split()[2]
        elif not line.startswith("#"):
            assert line.split("{")[0].split()[0] == family, line


def test_agent_process_figures(proc: Path) -> None:
    families = parse(Metrics(str(proc)).scrape())
    assert families["kata_agent_threads"].samples[0].value == 4
    assert families["kata_agent_total_time"].samples[0].value == pytest.approx(300 / TPS)
    assert families["kata_agent_total_vm"].samples[0].value == 123456789
    assert families["kata_agent_total_rss"].samples[0].value == 2000 * PAGE
    assert values(families["kata_agent_proc_stat"]) == {
        "utime": 250,
        "stime": 50,
        "cutime": 7,
        "cstime": 3,
    }
    status = values(families["kata_agent_proc_status"])
    assert set(status) == set(PROC_STATUS)
    assert (status["vmpeak"], status["vmrss"], status["vmswap"]) == (20000, 8000, 0)
    assert status["voluntary_ctxt_switches"] == 77
    io = values(families["kata_agent_io_stat"])
    assert (io["rchar"], io["write_bytes"], io["cancelled_write_bytes"]) == (11, 8192, 0)
    assert families["kata_agent_process_open_fds"].samples[0].value == 4
    assert families["kata_agent_process_max_fds"].samples[0].value == 1024
    assert families["kata_agent_process_resident_memory_bytes"].samples[0].value == 2000 * PAGE
    assert families["kata_agent_process_start_time_seconds"].samples[0].value == pytest.approx(
        1700000000 + 1000 / TPS
    )
    cpu = families["kata_agent_process_cpu_seconds"].samples[0]
    assert (cpu.name, cpu.value) == ("kata_agent_process_cpu_seconds_total", 300 / TPS)


def test_guest_figures(proc: Path) -> None:
    families = parse(Metrics(str(proc)).scrape())
    assert values(families["kata_guest_load"]) == {"load1": 0.5, "load5": 0.25, "load15": 0.1}
    assert values(families["kata_guest_tasks"]) == {"cur": 3, "max": 128}
    cpu = by(families["kata_guest_cpu_time"], "cpu", "item")
    assert len(cpu) == 30
    assert cpu["total", "user"] == 100 * 1000 // TPS
    assert cpu["0", "guest_nice"] == 10 * 1000 // TPS
    assert cpu["1", "iowait"] == 0
    vmstat = values(families["kata_guest_vm_stat"])
    assert vmstat == {"nr_free_pages": 1000, "pgfault": 123456, "nr_weird": -2}
    net = by(families["kata_guest_netdev_stat"], "interface", "item")
    assert len(net) == 32
    assert (net["eth0", "recv_bytes"], net["eth0", "sent_compressed"]) == (5000, 12)
    assert net["lo", "sent_bytes"] == 100
    disks = by(families["kata_guest_diskstat"], "disk", "item")
    assert len(disks) == 2 * 17
    assert (disks["vda", "reads"], disks["vda", "time_flushing"]) == (10, 8)
    assert (disks["loop0", "weighted_time_in_progress"], disks["loop0", "flushes"]) == (1, 0)
    meminfo = values(families["kata_guest_meminfo"])
    assert set(meminfo) == set(MEMINFO)
    assert meminfo["mem_total"] == 2000000 * 1024
    assert meminfo["active_anon"] == 1234 * 1024
    assert meminfo["hugepages_total"] == 3  # a count, not a size
    assert meminfo["hugepagesize"] == 2048 * 1024
    assert meminfo["swap_total"] == 0  # missing on this kernel


def test_filesystems_once_per_device_read_write_only(proc: Path, tmp_path: Path) -> None:
    families = parse(Metrics(str(proc)).scrape())
    for name in ("kata_guest_filesystem_bytes", "kata_guest_filesystem_inodes"):
        samples = families[name].samples
        # /ro is read-only, /run is tmpfs, the second vda1 mount the same device, and
        # "/gone away" (escaped in mountinfo) cannot be statfs'ed.
        assert {(s.labels["mount"], s.labels["device"]) for s in samples} == {
            (str(tmp_path / "disk"), "vda1")
        }
        figures = {s.labels["item"]: s.value for s in samples}
        assert figures["total"] > 0 and figures["total"] >= figures["used"] >= 0
        assert figures["used"] + figures["available"] == figures["total"]
    st = os.statvfs(tmp_path / "disk")
    total = values(families["kata_guest_filesystem_bytes"])["total"]
    assert total == st.f_blocks * st.f_frsize


def test_scrape_count_increases(proc: Path) -> None:
    metrics = Metrics(str(proc))
    counts = [parse(metrics.scrape())["kata_agent_scrape_count"].samples[0].value for _ in range(3)]
    assert counts == [1, 2, 3]
    assert "\nkata_agent_scrape_count 4\n" in metrics.scrape()


@pytest.mark.parametrize(
    ("missing", "gone"),
    [
        ("vmstat", {"kata_guest_vm_stat"}),
        ("self/io", {"kata_agent_io_stat"}),
        ("diskstats", {"kata_guest_diskstat"}),
        ("loadavg", {"kata_guest_load", "kata_guest_tasks"}),
        (
            "self/mountinfo",
            {"kata_guest_filesystem_bytes", "kata_guest_filesystem_inodes"},
        ),
    ],
)
def test_a_missing_file_leaves_only_its_families_out(
    proc: Path, missing: str, gone: set[str]
) -> None:
    (proc / missing).unlink()
    families = parse(Metrics(str(proc)).scrape())
    assert set(families) == {n.removesuffix("_total") for n in FAMILIES} - gone


def test_a_garbled_file_leaves_only_its_families_out(proc: Path) -> None:
    (proc / "meminfo").write_text("MemTotal: lots\n")
    (proc / "stat").write_text("cpu  x\n")
    families = parse(Metrics(str(proc)).scrape())
    assert "kata_guest_meminfo" not in families
    assert "kata_guest_cpu_time" not in families
    assert "kata_agent_process_start_time_seconds" not in families  # btime is in /proc/stat
    assert "kata_agent_total_vm" in families


def test_an_empty_proc_still_answers(tmp_path: Path) -> None:
    families = parse(Metrics(str(tmp_path / "nothing")).scrape())
    assert list(families) == ["kata_agent_scrape_count"]


def test_this_hosts_proc() -> None:
    families = parse(Metrics().scrape())
    assert {n.removesuffix("_total") for n in ALWAYS} <= set(families)
    assert values(families["kata_guest_meminfo"])["mem_total"] > 0
    assert "lo" in {s.labels["interface"] for s in families["kata_guest_netdev_stat"].samples}


def test_text_escapes_and_orders() -> None:
    family = Metric("kata_guest_diskstat", 'Disks "statistics"\\ in\nsystem.', "gauge")
    family.add_sample("kata_guest_diskstat", {"item": "reads", "disk": 'a"b\\c\nd'}, 1.5)
    family.add_sample("kata_guest_diskstat", {"item": "merged", "disk": "a"}, 2**40)
    family.add_sample("kata_guest_diskstat", {"item": "x", "disk": "b"}, float("nan"))
    text = encode([family])
    assert text.splitlines() == [
        '# HELP kata_guest_diskstat Disks "statistics"\\\\ in\\nsystem.',
        "# TYPE kata_guest_diskstat gauge",
        'kata_guest_diskstat{disk="a",item="merged"} 1099511627776',
        'kata_guest_diskstat{disk="a\\"b\\\\c\\nd",item="reads"} 1.5',
        'kata_guest_diskstat{disk="b",item="x"} NaN',
    ]
    (parsed,) = text_string_to_metric_families(text)
    assert parsed.documentation == 'Disks "statistics"\\ in\nsystem.'
    assert parsed.samples[1].labels == {"disk": 'a"b\\c\nd', "item": "reads"}


def run(code: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_agent_start_does_not_import_prometheus_client() -> None:
    out = run(
        "import sys\n"
        "import pykata.agent.daemon, pykata.agent.rpc.agent_service\n"
        "print(sorted(m for m in sys.modules if m.startswith('prometheus_client')))\n"
        "print('pykata.agent.metrics.collector' in sys.modules)\n"
    )
    assert out == ["[]", "False"]


def test_first_scrape_in_the_serving_agent_loads_only_the_model_and_registry() -> None:
    """The agent blocks ssl: prometheus_client's package __init__ (its HTTP exposition, which
    imports ssl) must not run, and ssl stays blocked."""
    out = run(
        "import sys\n"
        "from pykata.agent.main import serving_module\n"
        "serving_module()\n"
        "from pykata.agent import metrics\n"
        "text = metrics.collect() + metrics.collect()\n"
        "print('kata_agent_scrape_count 2' in text, sys.modules['ssl'])\n"
        "print('prometheus_client.exposition' in sys.modules,"
        " 'prometheus_client.process_collector' in sys.modules)\n"
    )
    assert out == ["True None", "False False"]
