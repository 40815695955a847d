"""The boot benchmark's pure parts (tests/bench/boot_timeline.py), fed with console lines
recorded from real TCG boots: stamping, the guest-to-host clock mapping, medians and tables,
the initrd's cpio sizes. No VM."""

from __future__ import annotations

import itertools
import os
import shutil
import statistics
import subprocess
import threading
from pathlib import Path

import pytest
from bench.boot_timeline import (
    BOUNDARIES,
    ConsoleReader,
    Line,
    LineSplitter,
    Timeline,
    TimelineError,
    agent_record,
    cpio_sizes,
    initrd_sizes,
    kernel_split_table,
    phase_table,
    summarise,
    timeline,
    write_chart,
)

# Recorded from `bench_boot.py --verbose-console` with our kernel (config shortened).
ANNOUNCE = (
    '{"ts": "2026-11-29T17:37:52.699792Z", "level": "info", "msg": "announce", "pid": 1, '
    '"name": "kata-agent", "source": "agent", "subsystem": "main", "agent-version": "0.1.0", '
    '"init-daemon": true, "config": {"log_level": "info"}, "uptime": 6.78, '
    '"exec-uptime": 0.21}'
)
READY = (
    '{"ts": "2026-11-29T17:37:54.338602Z", "level": "info", "msg": "agent ready", "pid": 1, '
    '"name": "kata-agent", "source": "agent", "subsystem": "main", '
    '"address": "vsock://-1:1024", "protobuf": "upb", "uptime": 8.42}'
)
KERNEL_LINES = [
    "[    0.000000] Linux version 6.12.118 (root@vm) (gcc (Debian 12.2.0-14+deb12u1) 12.2.0)",
    "[    0.700495] Unpacking initramfs...",
    "[    3.231897] Freeing initrd memory: 25580K",
    "[    3.449154] Run /init as init process",
]
QEMU_STARTED = 1000.0


def boot_lines(kernel_start: float, verbose: bool = False) -> list[Line]:
    """A boot's console as the reader stamps it, the guest's kernel starting at
    ``kernel_start`` seconds after QEMU (host clock), lines arriving 3 ms after logging."""
    lines = []
    if verbose:
        for text in KERNEL_LINES:
            at = QEMU_STARTED + kernel_start + float(text[1:13]) + 0.003
            lines.append(Line(at, at + 0.001, text))
    announce = QEMU_STARTED + kernel_start + 6.78 + 0.003
    ready = QEMU_STARTED + kernel_start + 8.42 + 0.003
    lines.append(Line(announce, announce + 0.002, ANNOUNCE))
    lines.append(Line(ready, ready + 0.002, READY))
    return lines


def test_splitter_stamps_a_line_when_its_first_byte_arrives() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b'{"msg": ', 1.0) == []
    assert splitter.feed(b'"announce"}\r\n[    0.1', 1.5) == [Line(1.0, 1.5, '{"msg": "announce"}')]
    assert splitter.feed(b"] x\r\n\r\nlast", 2.0) == [
        Line(1.5, 2.0, "[    0.1] x"),
        Line(2.0, 2.0, ""),
    ]
    assert splitter.feed(b"\n", 3.0) == [Line(2.0, 3.0, "last")]


def test_console_reader_reads_a_fifo_until_its_writer_closes(tmp_path: Path) -> None:
    fifo = tmp_path / "console.out"
    os.mkfifo(fifo)
    reader = ConsoleReader(fifo)  # before the writer, as with QEMU

    def write() -> None:
        with open(fifo, "wb", buffering=0) as out:
            for text in (*KERNEL_LINES, ANNOUNCE):
                out.write(text.encode() + b"\r\n")

    writer = threading.Thread(target=write)
    writer.start()
    writer.join()
    lines = reader.close()
    assert [line.text for line in lines] == [*KERNEL_LINES, ANNOUNCE]
    assert all(a.first <= a.last <= b.first for a, b in itertools.pairwise(lines))


def test_agent_record_takes_only_the_agents_json() -> None:
    record = agent_record(ANNOUNCE)
    assert record is not None and record["exec-uptime"] == 0.21
    # A kernel message can end up in front of the agent's line on one console.
    assert agent_record("[    7.1] random: x" + READY) == agent_record(READY)
    assert agent_record(KERNEL_LINES[0]) is None
    assert agent_record('{"name": "other", "msg": "announce"}') is None
    assert agent_record('{"ts": "2026-11-29T17:37:52.699792Z", "lev') is None


def test_timeline_places_the_guest_clock_on_the_hosts() -> None:
    t = timeline(
        "ours", boot_lines(kernel_start=0.25), QEMU_STARTED, QEMU_STARTED + 8.9, QEMU_STARTED + 9
    )
    # The announce line arrived at 0.25 + 6.78 + 0.003: kernel start keeps the 3 ms lag.
    assert t.at["kernel_start"] == pytest.approx(0.253)
    assert t.at["init_exec"] == pytest.approx(0.253 + 0.21)
    assert t.at["announce"] == pytest.approx(7.033)
    assert t.at["ready"] == pytest.approx(8.673)
    assert (t.at["health"], t.at["sandbox"]) == pytest.approx((8.9, 9.0))
    assert t.drift == pytest.approx(0.0)
    assert t.marks == {} and t.run_init() == {}
    phases = t.phases()
    assert list(phases) == list(BOUNDARIES)
    assert phases["announce"] == pytest.approx(6.78 - 0.21)
    assert sum(phases.values()) == pytest.approx(9.0)


def test_drift_shows_a_guest_clock_off_the_hosts() -> None:
    lines = boot_lines(kernel_start=0.5)
    late = lines[-1]
    lines[-1] = Line(late.first + 0.04, late.last + 0.04, late.text)
    t = timeline("debian", lines, QEMU_STARTED, QEMU_STARTED + 9.5, QEMU_STARTED + 9.6)
    assert t.drift == pytest.approx(0.04)


def test_verbose_console_marks_split_kernel_start_to_init() -> None:
    t = timeline(
        "ours", boot_lines(0.25, verbose=True), QEMU_STARTED, QEMU_STARTED + 9, QEMU_STARTED + 9.1
    )
    assert t.marks == {
        "linux_version": 0.0,
        "unpack_start": 0.700495,
        "unpack_end": 3.231897,
        "run_init": 3.449154,
    }
    assert t.marks_arrived["run_init"] == pytest.approx(0.25 + 3.449154 + 0.003)
    # This agent's exec-uptime (0.21 s) is PID 1's task start, 3.24 s before "Run /init".
    run_init = t.run_init()
    assert run_init["to_announce"] == pytest.approx(6.78 - 3.449154)
    assert run_init["exec_vs_run_init"] == pytest.approx(0.21 - 3.449154)
    assert run_init["kernel_start_vs_run_init"] == pytest.approx(0.0)
    table = kernel_split_table([summarise([t])])
    assert table is not None
    assert "| initramfs unpack (Debian's kernel: beside other init work) | 2.53 |" in table
    assert "| unpack done -> Run /init | 0.22 |" in table
    assert '| "Run /init" -> announce (interpreter, early imports) | 3.33 |' in table
    assert '| check: /init exec by exec-uptime - by the "Run /init" stamp | -3.24 |' in table


def test_timeline_needs_the_announce_line_and_its_clock() -> None:
    lines = boot_lines(0.25)
    with pytest.raises(TimelineError, match="announce"):
        timeline("ours", lines[1:], QEMU_STARTED, QEMU_STARTED + 9, QEMU_STARTED + 9.1)
    no_clock = ANNOUNCE.replace('"exec-uptime": 0.21', '"exec-uptime": null')
    lines[0] = Line(lines[0].first, lines[0].last, no_clock)
    with pytest.raises(TimelineError, match="exec-uptime"):
        timeline("ours", lines, QEMU_STARTED, QEMU_STARTED + 9, QEMU_STARTED + 9.1)


def timelines(
    kernel: str, starts: list[float], marks: bool = False, sandbox: float = 0.1
) -> list[Timeline]:
    """Boots whose kernel starts at ``starts``; Health.Check at +9 s, CreateSandbox
    ``sandbox`` s later."""
    return [
        timeline(
            kernel,
            boot_lines(s, marks),
            QEMU_STARTED,
            QEMU_STARTED + s + 9,
            QEMU_STARTED + s + 9 + sandbox,
        )
        for s in starts
    ]


def test_summary_takes_medians_of_boundaries_and_of_phases() -> None:
    boots = [
        *timelines("debian", [1.0], sandbox=0.5),
        *timelines("debian", [3.0], sandbox=0.1),
        *timelines("debian", [1.2], sandbox=0.2),
    ]
    summary = summarise(boots)
    assert (summary.kernel, summary.boots) == ("debian", 3)
    assert summary.at["kernel_start"] == pytest.approx(1.2 + 0.003)
    # Boundaries and durations have medians of their own (here from different boots).
    assert summary.at["sandbox"] == pytest.approx(statistics.median([10.5, 12.1, 10.4]))
    assert summary.phases["sandbox"] == pytest.approx(0.2)
    assert summary.phases["announce"] == pytest.approx(6.78 - 0.21)
    assert summary.marks == {} and summary.run_init == {}


def test_phase_table_has_a_row_per_phase_and_kernel_columns() -> None:
    summaries = [summarise(timelines("debian", [1.0])), summarise(timelines("ours", [0.2]))]
    table = phase_table(summaries)
    rows = table.splitlines()
    assert rows[0].startswith("| phase | debian: s (median of 1) | debian: ends at s | ours: s")
    assert len(rows) == 2 + len(BOUNDARIES) + 1
    assert "| QEMU start -> kernel start" in rows[2] and "| 1.00 | 1.00 | 0.20 | 0.20 |" in rows[2]
    assert rows[-1].startswith("| check: ready line's stamp") and rows[-1].count("|") == 6
    assert kernel_split_table([summarise(timelines("debian", [1.0]))]) is None


def test_marks_median_over_the_boots_that_showed_them() -> None:
    summary = summarise([*timelines("ours", [0.2], marks=True), *timelines("ours", [0.3])])
    assert summary.marks["unpack_end"] == pytest.approx(3.231897)
    assert summary.run_init["exec_vs_run_init"] == pytest.approx(0.21 - 3.449154)


def test_chart_is_a_png(tmp_path: Path) -> None:
    chart = tmp_path / "boot.png"
    summaries = [summarise(timelines("debian", [1.0, 1.1])), summarise(timelines("ours", [0.2]))]
    write_chart(summaries, chart, "test")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/a").write_bytes(b"x" * 1001)
    (root / "usr/bin/b").write_bytes(b"y" * 4096)
    (root / "empty").write_bytes(b"")
    os.link(root / "usr/bin/a", root / "usr/bin/a-link")  # newc stores its data once
    (root / "init").symlink_to("usr/bin/a")  # 9 bytes: the link target
    return root


def cpio(root: Path) -> bytes:
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    return subprocess.run(
        ["cpio", "--quiet", "-o", "-H", "newc"],
        input="\n".join(names).encode(),
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout


def test_cpio_sizes_sums_the_members(tree: Path, tmp_path: Path) -> None:
    archive = tmp_path / "a.cpio"
    archive.write_bytes(cpio(tree))
    with archive.open("rb") as f:
        sizes = cpio_sizes(f)
    # usr, usr/bin, a, a-link, b, empty, init
    assert sizes.members == 7
    assert sizes.file_bytes == 1001 + 4096 + 9
    assert sizes.archive_bytes == archive.stat().st_size


def test_cpio_sizes_reads_concatenated_archives(tree: Path, tmp_path: Path) -> None:
    archive = tmp_path / "two.cpio"
    archive.write_bytes(cpio(tree) + cpio(tree / "usr"))
    with archive.open("rb") as f:
        sizes = cpio_sizes(f)
    assert (sizes.members, sizes.file_bytes) == (7 + 4, 2 * (1001 + 4096) + 9)


def test_cpio_sizes_refuses_what_is_not_newc(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"070707" + b"0" * 200)  # the old binary-portable format
    with bad.open("rb") as f, pytest.raises(ValueError, match="newc"):
        cpio_sizes(f)


@pytest.mark.parametrize("tool", ["zstd", "gzip", "none"])
def test_initrd_sizes_streams_through_the_decompressor(
    tree: Path, tmp_path: Path, tool: str
) -> None:
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(cpio(tree))
    if tool != "none":
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (`just setup` installs it)")
        subprocess.run([tool, "-q", "-f", "-9", str(initrd)], check=True)
        (tmp_path / f"initrd.img.{'zst' if tool == 'zstd' else 'gz'}").rename(initrd)
    sizes = initrd_sizes(initrd)
    assert sizes.compression == tool
    assert sizes.compressed_bytes == initrd.stat().st_size
    assert (sizes.cpio.members, sizes.cpio.file_bytes) == (7, 1001 + 4096 + 9)
