"""Agent memory by what it imports: the guest's own interpreter, modules and flags.

Usage: bench_memory.py [--initrd PATH] [--types N]   (as root: chroot, unshare)

Unpacks the initrd (build/'s, built or reused like `just image`; or --initrd) into a
temporary folder and runs its Python there, chrooted, with its own /proc and the flags of its
/init (`-ISOO`): the guest's interpreter and compiled modules, on this host's CPU. Each row is
measured after `gc.collect()` and `malloc_trim(0)`, as the agent trims once it is ready.

- steps, one interpreter, cumulative: the bare interpreter; asyncio with the standard library
  it pulls in; protobuf and the ttRPC server; the agent's start (main's serving module, with
  its deferrals); the health server; AgentService (every handler and all the sandbox uses).
- subsystems, one fresh interpreter each on top of the health server: what importing that
  part alone adds (shared parts counted in every row that pulls them).
- the largest object types once everything is imported (sys.getsizeof, objects the garbage
  collector tracks and what they refer to).

The peer is the bare interpreter of the same run: each step's share of the total is printed.
The guest reports the same process's figures through GetMetrics (`just bench-e2e`); there the
interpreter's file-backed pages count as shmem, since the initramfs lives in memory.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.boot_timeline import DECOMPRESSORS

from pykata.builder import build
from pykata.builder.stages import Stages

STEPS = [
    ("interpreter (-ISOO, no site)", []),
    ("asyncio and the stdlib it imports (+ ctypes, json)", ["asyncio"]),
    ("protobuf and the ttRPC server", ["pykata.ttrpc"]),
    ("agent start (main, serving module)", ["@serving"]),
    ("health server (rpc.wiring)", ["pykata.agent.rpc.wiring"]),
    ("AgentService (all handlers, sandbox)", ["pykata.agent.rpc.agent_service"]),
]
SUBSYSTEMS = [
    "pykata.agent.sandbox",
    "pykata.agent.container.container",
    "pykata.agent.container.spec",
    "pykata.agent.process.process",
    "pykata.agent.storage.manager",
    "pykata.agent.network.netlink",
    "pykata.agent.network.iptables",
    "pykata.agent.device.registry",
    "pykata.agent.cgroups.stats",
    "pykata.agent.metrics.collector",
    "pykata.agent.upgrade.manager",
]

# Runs inside the chroot: argv = [json list of steps, types N]; one JSON line per step.
PROBE = r"""
import gc, sys
sys.path.append("/usr/lib/python3/dist-packages")


def status():
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                fields[key] = int(value.split()[0])
    return fields


# The bare interpreter, before the probe's own imports (ctypes, json: the agent's too).
print(repr({"step": 1, "modules": len(sys.modules), **status()}), flush=True)
import ctypes, json
libc = ctypes.CDLL(None)


def trimmed_status():
    gc.collect()
    libc.malloc_trim(0)
    return status()


def types(top):
    sizes, counts, stack = {}, {}, gc.get_objects()
    seen = {id(sizes), id(counts), id(stack)}
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        name = type(obj).__name__
        sizes[name] = sizes.get(name, 0) + sys.getsizeof(obj)
        counts[name] = counts.get(name, 0) + 1
        stack.extend(gc.get_referents(obj))
    ranked = sorted(sizes, key=sizes.get, reverse=True)[:top]
    return [[name, sizes[name], counts[name]] for name in ranked]


steps, top = json.loads(sys.argv[1]), int(sys.argv[2])
for n, names in enumerate(steps, 2):
    for name in names:
        if name == "@serving":
            import pykata.agent.main
            pykata.agent.main.serving_module()
        else:
            __import__(name)
    print(json.dumps({"step": n, "modules": len(sys.modules), **trimmed_status()}), flush=True)
if top:
    print(json.dumps({"types": types(top)}), flush=True)
"""


def unpack(initrd: Path, root: Path) -> None:
    with initrd.open("rb") as f:
        magic = f.read(6)
    command = next((c for prefix, c in DECOMPRESSORS.items() if magic.startswith(prefix)), None)
    source = subprocess.Popen([*command, str(initrd)], stdout=subprocess.PIPE) if command else None
    stdin = source.stdout if source else initrd.open("rb")
    subprocess.run(["cpio", "-idm", "--quiet", "-D", str(root)], stdin=stdin, check=True)
    if source is not None:
        source.wait()
        if source.returncode != 0:
            raise RuntimeError(f"{command[0] if command else ''} failed on {initrd}")


def interpreter_flags(root: Path) -> list[str]:
    """The flags /init runs Python with (its shebang), e.g. ['-ISOO']."""
    shebang = (root / "init").read_text().splitlines()[0]
    if not shebang.startswith("#!"):
        raise RuntimeError("/init is not a script")
    return shebang[2:].split()[1:]


def probe(root: Path, steps: list[list[str]], types: int) -> list[dict[str, Any]]:
    (root / "tmp").mkdir(exist_ok=True)
    (root / "tmp/memory-probe.py").write_text(PROBE)
    command = [
        "unshare", "--mount", "--pid", "--fork", f"--mount-proc={root / 'proc'}",
        "chroot", str(root), "/usr/bin/python3", *interpreter_flags(root),
        "/tmp/memory-probe.py", json.dumps(steps), str(types),
    ]  # fmt: skip
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    # The first line is a repr: printed before the probe imports json.
    first, *rest = out.splitlines()
    return [ast.literal_eval(first), *(json.loads(line) for line in rest)]


def mib(kib: float) -> str:
    return f"{kib / 1024:.2f}"


def report(
    rows: list[dict[str, Any]],
    types: list[list[Any]],
    subsystems: list[tuple[str, dict[str, Any], dict[str, Any]]],
    initrd: Path,
) -> None:
    print(
        f"\nagent memory by import: {time.strftime('%Y-%m-%d')}, {platform.node()}, "
        f"{os.cpu_count()} CPUs, initrd {initrd} (the guest's Python, chrooted)"
    )
    total = rows[-1]["RssAnon"]
    print("| step | RSS MiB | anonymous MiB | + anonymous | share of anonymous | modules |")
    print("|---|---:|---:|---:|---:|---:|")
    before = 0
    for (name, _), row in zip(STEPS, rows, strict=True):
        added = row["RssAnon"] - before
        print(
            f"| {name} | {mib(row['VmRSS'])} | {mib(row['RssAnon'])} | +{mib(added)} | "
            f"{added / total:.0%} | {row['modules']} |"
        )
        before = row["RssAnon"]
    print("\nsubsystems, each alone on top of the health server:")
    print("| module | + anonymous MiB | + modules |")
    print("|---|---:|---:|")
    for name, base, after in subsystems:
        print(
            f"| {name} | +{mib(after['RssAnon'] - base['RssAnon'])} | "
            f"{after['modules'] - base['modules']} |"
        )
    if types:
        print("\nlargest object types, everything imported (sys.getsizeof):")
        for name, size, count in types:
            print(f"  {name:28s} {size / 2**20:6.2f} MiB  {count:7d} objects")
    print(json.dumps({"steps": rows, "types": types, "subsystems": subsystems}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--initrd", type=Path, help="default: build/'s, built like `just image`")
    parser.add_argument("--types", type=int, default=12, help="object types listed (0: none)")
    args = parser.parse_args()
    initrd = args.initrd
    if initrd is None:
        stages = Stages(build.Options().output / "bench-memory.log")
        build.setup(None, stages)
        initrd = build.build(build.Options(flavour="initrd"), stages).artifact
    with tempfile.TemporaryDirectory(prefix="pykata-memory-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        unpack(initrd, root)
        measured = probe(root, [names for _, names in STEPS[1:]], args.types)
        rows = [m for m in measured if m.get("step", 0) > 0]
        types: list[list[Any]] = next((m["types"] for m in measured if "types" in m), [])
        health = [names for _, names in STEPS[1:5]]
        subsystems = []
        for name in SUBSYSTEMS:
            alone = probe(root, [*health, [name]], 0)
            subsystems.append((name, alone[-2], alone[-1]))
    report(rows, types, subsystems, initrd)


if __name__ == "__main__":
    main()
