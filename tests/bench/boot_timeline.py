"""A guest boot's timeline on the host's clock, for the boot benchmarks.

- Console lines stamped on arrival: :class:`ConsoleReader` reads the VM's console FIFO
  (``VM(console_pipe=True)``) on a thread of its own and stamps each line with
  ``time.monotonic()`` when its first byte arrived.
- The guest's clock placed on the host's: the agent's announce line carries ``uptime``
  (seconds since the guest kernel's clock started) and ``exec-uptime`` (when /init was
  exec'd), so kernel start = host stamp of announce - uptime, /init exec = kernel start +
  exec-uptime. The "agent ready" line (its own ``uptime``) checks the mapping: its host stamp
  minus kernel start + uptime is the drift.
- Phases between those boundaries, medians over boots, a table and a chart.
- The initrd's unpacked size: the sum of its cpio members' sizes, streamed through the
  decompressor.

Also the kernel paths the benchmarks share (our kernel is only used when built from the
current fragments; nothing here builds it).
"""

from __future__ import annotations

import json
import os
import re
import select
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pykata.builder import kernel, layout

OUR_KERNEL_BUILD = layout.cache_root() / "kernel/build"
OUR_KERNEL = OUR_KERNEL_BUILD / "arch/x86/boot/bzImage"


def our_kernel_built() -> bool:
    """Whether the cache holds our kernel built from the current kernel-config fragments."""
    return kernel.current_build(OUR_KERNEL_BUILD, layout.fragments())


# Console lines


@dataclass(frozen=True)
class Line:
    first: float  # host clock (time.monotonic) when the line's first byte arrived
    last: float  # ... and its newline
    text: str


class LineSplitter:
    """Splits a console byte stream into lines stamped with the host times they arrived."""

    def __init__(self) -> None:
        self._partial = bytearray()
        self._first: float | None = None

    def feed(self, data: bytes, now: float) -> list[Line]:
        lines = []
        while data:
            if self._first is None:
                self._first = now
            head, newline, data = data.partition(b"\n")
            self._partial += head
            if not newline:
                break
            text = self._partial.decode(errors="replace").rstrip("\r")
            lines.append(Line(self._first, now, text))
            self._partial.clear()
            self._first = None
        return lines


class ConsoleReader:
    """Reads a console FIFO from now until :meth:`close` (or until QEMU closes it). A thread
    of its own, not the event loop: the boot's client work never delays a stamp."""

    def __init__(self, fifo: Path) -> None:
        # Non-blocking open: QEMU may not have opened its end yet.
        self._fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        self._lines: list[Line] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="console", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        splitter = LineSplitter()
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        while True:
            # Once asked to stop, take what is already in the pipe, then return.
            stopping = self._stop.is_set()
            if poller.poll(0 if stopping else 100):
                try:
                    data = os.read(self._fd, 65536)
                except BlockingIOError:
                    data = None
                now = time.monotonic()
                if data == b"":
                    return  # QEMU closed the console
                if data:
                    self._lines.extend(splitter.feed(data, now))
                    continue
            if stopping:
                return

    def close(self) -> list[Line]:
        """Stop reading (after what the pipe holds); every complete line read."""
        self._stop.set()
        self._thread.join()
        os.close(self._fd)
        return self._lines


def agent_record(text: str) -> dict[str, Any] | None:
    """The agent's JSON log record on a console line, if the line holds one."""
    start = text.find("{")
    if start < 0:
        return None
    try:
        record = json.loads(text[start:])
    except json.JSONDecodeError:
        return None
    if isinstance(record, dict) and record.get("name") == "kata-agent":
        return record
    return None


# printk's own time stamp (printk.time=1): seconds on the guest's clock.
KERNEL_LINE = re.compile(r"^\[\s*(\d+\.\d+)\] (.*)$")
# Kernel lines that split "kernel start -> /init exec" (KERN_INFO: shown from loglevel=7 on).
KERNEL_MARKS = {
    "linux_version": ("Linux version",),
    # The first with CONFIG_BLK_DEV_RAM (Debian's kernel), the second without (ours).
    "unpack_start": ("Trying to unpack rootfs image as initramfs", "Unpacking initramfs"),
    "unpack_end": ("Freeing initrd memory",),
    "run_init": ("Run /init as init process",),
}


def kernel_marks(lines: list[Line]) -> dict[str, tuple[float, Line]]:
    """The first line carrying each of KERNEL_MARKS, with its printk stamp (guest seconds)."""
    marks: dict[str, tuple[float, Line]] = {}
    for line in lines:
        match = KERNEL_LINE.match(line.text)
        if match is None:
            continue
        for name, texts in KERNEL_MARKS.items():
            if name not in marks and match.group(2).startswith(texts):
                marks[name] = (float(match.group(1)), line)
    return marks


# Timelines

# Phase boundaries in boot order, seconds since QEMU was spawned on the host's clock.
BOUNDARIES = ("kernel_start", "init_exec", "announce", "ready", "health", "sandbox")
BOUNDARY_NAMES = {
    "kernel_start": "kernel start",
    "init_exec": "/init exec",
    "announce": "agent announce",
    "ready": "agent listening (ready)",
    "health": "first Health.Check answered",
    "sandbox": "CreateSandbox answered",
}
# What each phase (previous boundary -> this one) is made of.
PHASE_NAMES = {
    "kernel_start": "QEMU start -> kernel start (firmware, kernel load and decompression)",
    "init_exec": "kernel start -> /init exec (kernel init, initramfs unpack)",
    "announce": "/init exec -> announce (interpreter, early imports)",
    "ready": "announce -> listening (PID 1 set-up, imports, server)",
    "health": "listening -> first Health.Check answered (vsock, ttRPC)",
    "sandbox": "Health.Check -> CreateSandbox answered (virtio-fs mount)",
}


class TimelineError(Exception):
    """The console lacks what places the boot on the host's clock."""


@dataclass(frozen=True)
class Timeline:
    kernel: str
    at: dict[str, float]  # boundary -> seconds since QEMU start (host clock)
    drift: float  # the ready line's host stamp minus (kernel start + its uptime), seconds
    # A verbose console only: KERNEL_MARKS' printk stamps (guest seconds since kernel start)
    # and when their lines arrived (seconds since QEMU start).
    marks: dict[str, float] = field(default_factory=dict)
    marks_arrived: dict[str, float] = field(default_factory=dict)

    def phases(self) -> dict[str, float]:
        """Each phase's seconds, keyed by the boundary that ends it."""
        previous = 0.0
        durations = {}
        for name in BOUNDARIES:
            durations[name] = self.at[name] - previous
            previous = self.at[name]
        return durations

    def run_init(self) -> dict[str, float]:
        """With a verbose console, what the kernel's "Run /init" line adds: the time from it
        to the announce line, and by how many seconds the announce line's mapping disagrees
        with it, on /init exec (exec-uptime vs its printk stamp) and on kernel start (its
        arrival minus its printk stamp; includes the UART's lag)."""
        if "run_init" not in self.marks:
            return {}
        run_init = self.marks["run_init"]
        kernel_start = self.at["kernel_start"]
        return {
            "to_announce": self.at["announce"] - kernel_start - run_init,
            "exec_vs_run_init": self.at["init_exec"] - kernel_start - run_init,
            "kernel_start_vs_run_init": self.marks_arrived["run_init"] - run_init - kernel_start,
        }


def _agent_line(lines: list[Line], msg: str) -> tuple[Line, dict[str, Any]]:
    for line in lines:
        record = agent_record(line.text)
        if record is not None and record.get("msg") == msg:
            return line, record
    raise TimelineError(f"no agent {msg!r} line on the console")


def _seconds(record: dict[str, Any], key: str) -> float:
    value = record.get(key)
    if not isinstance(value, int | float):
        raise TimelineError(f"the agent's {record.get('msg')!r} line has no {key!r}: {value!r}")
    return float(value)


def timeline(
    kernel_name: str, lines: list[Line], qemu_started: float, health: float, sandbox: float
) -> Timeline:
    """One boot's timeline from its stamped console lines and the host times (monotonic)
    of QEMU's spawn and the two answers."""
    announce_line, announce = _agent_line(lines, "announce")
    ready_line, ready = _agent_line(lines, "agent ready")
    # The first byte is the closest to the moment the agent read its uptime.
    announce_at = announce_line.first - qemu_started
    ready_at = ready_line.first - qemu_started
    kernel_start = announce_at - _seconds(announce, "uptime")
    marks = kernel_marks(lines)
    return Timeline(
        kernel=kernel_name,
        at={
            "kernel_start": kernel_start,
            "init_exec": kernel_start + _seconds(announce, "exec-uptime"),
            "announce": announce_at,
            "ready": ready_at,
            "health": health - qemu_started,
            "sandbox": sandbox - qemu_started,
        },
        drift=ready_at - (kernel_start + _seconds(ready, "uptime")),
        marks={name: stamp for name, (stamp, _) in marks.items()},
        marks_arrived={name: line.first - qemu_started for name, (_, line) in marks.items()},
    )


@dataclass(frozen=True)
class Summary:
    """Medians over one kernel's boots."""

    kernel: str
    boots: int
    at: dict[str, float]
    phases: dict[str, float]
    drift: float
    marks: dict[str, float]
    run_init: dict[str, float]


def _medians(dicts: list[dict[str, float]]) -> dict[str, float]:
    """Per key, the median over the dicts that have it."""
    values: dict[str, list[float]] = {}
    for d in dicts:
        for name, value in d.items():
            values.setdefault(name, []).append(value)
    return {name: statistics.median(v) for name, v in values.items()}


def summarise(timelines: list[Timeline]) -> Summary:
    """Medians of one kernel's boots (marks, run_init: of the boots that showed them)."""
    return Summary(
        kernel=timelines[0].kernel,
        boots=len(timelines),
        at={b: statistics.median(t.at[b] for t in timelines) for b in BOUNDARIES},
        phases={b: statistics.median(t.phases()[b] for t in timelines) for b in BOUNDARIES},
        drift=statistics.median(t.drift for t in timelines),
        marks=_medians([t.marks for t in timelines]),
        run_init=_medians([t.run_init() for t in timelines]),
    )


def phase_table(summaries: list[Summary]) -> str:
    """Markdown: per phase, each kernel's median duration and the median time it ends at."""
    head = "| phase | " + " | ".join(
        f"{s.kernel}: s (median of {s.boots}) | {s.kernel}: ends at s" for s in summaries
    )
    rule = "|---|" + "---:|---:|" * len(summaries)
    rows = [head + " |", rule]
    for b in BOUNDARIES:
        cells = " | ".join(f"{s.phases[b]:.2f} | {s.at[b]:.2f}" for s in summaries)
        rows.append(f"| {PHASE_NAMES[b]} | {cells} |")
    drift = " | ".join(f"{s.drift * 1000:+.0f} ms |" for s in summaries)
    rows.append(f"| check: ready line's stamp - (kernel start + its uptime) | {drift} |")
    return "\n".join(rows)


# Sub-phases of "kernel start -> /init exec" from a verbose console's kernel lines.
KERNEL_SPLITS = (
    ("kernel start -> initramfs unpack starts", "linux_version", "unpack_start"),
    ("initramfs unpack (Debian's kernel: beside other init work)", "unpack_start", "unpack_end"),
    ("unpack done -> Run /init", "unpack_end", "run_init"),
)
RUN_INIT_NAMES = {
    "to_announce": '"Run /init" -> announce (interpreter, early imports)',
    "exec_vs_run_init": 'check: /init exec by exec-uptime - by the "Run /init" stamp',
    "kernel_start_vs_run_init": 'check: kernel start by the "Run /init" line\'s arrival - by '
    "announce",
}


def kernel_split_table(summaries: list[Summary]) -> str | None:
    """Markdown: where "kernel start -> /init exec" goes, in guest seconds (medians); None
    when no boot showed the kernel's lines (a quiet console)."""
    if not any(s.marks for s in summaries):
        return None
    rows = [
        "| from the kernel's own lines (medians) | "
        + " | ".join(f"{s.kernel}: s" for s in summaries)
        + " |",
        "|---|" + "---:|" * len(summaries),
    ]
    for label, start, end in KERNEL_SPLITS:
        cells = []
        for s in summaries:
            begin, finish = s.marks.get(start), s.marks.get(end)
            cells.append("-" if begin is None or finish is None else f"{finish - begin:.2f}")
        rows.append(f"| {label} | {' | '.join(cells)} |")
    for name, label in RUN_INIT_NAMES.items():
        cells = [f"{s.run_init[name]:.2f}" if name in s.run_init else "-" for s in summaries]
        rows.append(f"| {label} | {' | '.join(cells)} |")
    return "\n".join(rows)


def write_chart(summaries: list[Summary], path: Path, title: str) -> None:
    """Stacked horizontal bars, one per kernel: each phase from the median time its start
    boundary is reached to the median time its end is (medians of monotonic boundaries stay
    in order, so the bar ends at the median time to CreateSandbox)."""
    # Imported here: the other boot benchmarks use this module without drawing.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 2.4 + 0.6 * len(summaries)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    colours = ["#8c8c8c", "#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3"]
    labels = [f"{s.kernel} (n={s.boots})" for s in summaries]
    longest = max(s.at[BOUNDARIES[-1]] for s in summaries)
    for index, (boundary, colour) in enumerate(zip(BOUNDARIES, colours, strict=True)):
        starts = [s.at[BOUNDARIES[index - 1]] if index else 0.0 for s in summaries]
        widths = [s.at[boundary] - start for s, start in zip(summaries, starts, strict=True)]
        bars = axes.barh(labels, widths, left=starts, color=colour, label=PHASE_NAMES[boundary])
        # Numbers only where they fit.
        texts = [f"{w:.2f}" if w > 0.06 * longest else "" for w in widths]
        axes.bar_label(bars, labels=texts, label_type="center", fontsize=8)
    for y, s in enumerate(summaries):
        end = s.at[BOUNDARIES[-1]]
        axes.text(end + 0.01 * longest, y, f"{end:.2f} s", va="center", fontsize=8)
    axes.invert_yaxis()
    axes.set_xlim(0, longest * 1.1)
    axes.set_xlabel("seconds since QEMU start (host clock; medians of each boundary)")
    axes.set_title(title, fontsize=9)
    figure.legend(loc="outside lower center", ncols=2, fontsize=8)
    figure.savefig(path, dpi=100)


# The initrd's size


@dataclass(frozen=True)
class CpioSizes:
    members: int
    file_bytes: int  # the sum of the members' sizes: what the initramfs holds unpacked
    archive_bytes: int  # the cpio stream's length (headers, names, padding)


CPIO_MAGICS = (b"070701", b"070702")  # newc, newc with checksums
CPIO_HEADER = 110  # magic + 13 fields of 8 hex digits
TRAILER = b"TRAILER!!!"


def _read(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise ValueError(f"cpio: {size} bytes wanted, {len(data)} left")
    return data


def _skip(stream: IO[bytes], size: int) -> None:
    while size:
        chunk = stream.read(min(size, 1 << 20))
        if not chunk:
            raise ValueError("cpio: archive ends inside a member")
        size -= len(chunk)


def cpio_sizes(stream: IO[bytes]) -> CpioSizes:
    """Count the members of the newc cpio archives in ``stream`` (the kernel takes several
    concatenated, with NUL padding between them) without unpacking them."""
    members = file_bytes = archive_bytes = 0
    while True:
        word = stream.read(4)
        if not word:
            break
        archive_bytes += len(word)
        # Archives end 4-byte aligned and are padded with NULs (to 512 bytes by cpio).
        if word == b"\0\0\0\0":
            continue
        header = word + _read(stream, CPIO_HEADER - 4)
        if header[:6] not in CPIO_MAGICS:
            raise ValueError(f"cpio: not a newc header at byte {archive_bytes - 4}")
        filesize = int(header[54:62], 16)
        namesize = int(header[94:102], 16)
        name_pad = -(CPIO_HEADER + namesize) % 4
        name = _read(stream, namesize + name_pad)[: namesize - 1]
        data_pad = -filesize % 4
        _skip(stream, filesize + data_pad)
        archive_bytes += CPIO_HEADER - 4 + namesize + name_pad + filesize + data_pad
        if name != TRAILER:
            members += 1
            file_bytes += filesize
    return CpioSizes(members, file_bytes, archive_bytes)


DECOMPRESSORS = {
    b"\x28\xb5\x2f\xfd": ["zstd", "-dcq"],
    b"\x1f\x8b": ["gzip", "-dc"],
    b"\xfd7zXZ\x00": ["xz", "-dc"],
    b"\x02\x21\x4c\x18": ["lz4", "-dc"],
}


@dataclass(frozen=True)
class InitrdSizes:
    compressed_bytes: int
    compression: str
    cpio: CpioSizes


def initrd_sizes(path: Path) -> InitrdSizes:
    """The initrd's size on disk and its cpio members' (decompressed as a stream)."""
    with path.open("rb") as f:
        magic = f.read(6)
    if magic in CPIO_MAGICS:
        with path.open("rb") as f:
            return InitrdSizes(path.stat().st_size, "none", cpio_sizes(f))
    command = next((c for prefix, c in DECOMPRESSORS.items() if magic.startswith(prefix)), None)
    if command is None:
        raise ValueError(f"{path}: unknown compression (starts {magic.hex()})")
    with subprocess.Popen([*command, str(path)], stdout=subprocess.PIPE) as tool:
        assert tool.stdout is not None
        sizes = cpio_sizes(tool.stdout)
    if tool.returncode != 0:
        raise ValueError(f"{path}: {command[0]} failed ({tool.returncode})")
    return InitrdSizes(path.stat().st_size, command[0], sizes)
