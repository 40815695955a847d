"""Pods through the real Kata shim on our image against containerd's runc shim, same run.

Usage: bench_kata.py [--runs N]   (as root, with KATA_SHIM set as for the kata test tier)

For each runtime, N times `ctr run --rm <busybox> true`, alternating: wall time (median)
and the machine's CPU time over the run (all processes, from /proc/stat: under TCG the
guest's emulation dominates), and the ratio Kata/runc.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kata"))

from stack import RUNTIME, guest_artifacts, start_stack

RUNC = "io.containerd.runc.v2"


def busy_seconds() -> float:
    """CPU time the whole machine spent not idle, in seconds."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    guest = guest_artifacts()
    with tempfile.TemporaryDirectory(prefix="pykata-bench-kata-") as tmp:
        kata = start_stack(guest, Path(tmp))
        wall: dict[str, list[float]] = {RUNTIME: [], RUNC: []}
        cpu: dict[str, list[float]] = {RUNTIME: [], RUNC: []}
        try:
            for n in range(args.runs):
                for runtime in (RUNTIME, RUNC):
                    name = f"bench-{runtime.rsplit('.', 2)[1]}-{n}"
                    t0, c0 = time.monotonic(), busy_seconds()
                    done = kata.containerd.ctr(
                        "run", "--rm", "--runtime", runtime, kata.image, name, "true"
                    )
                    wall[runtime].append(time.monotonic() - t0)
                    cpu[runtime].append(busy_seconds() - c0)
                    if done.returncode != 0:
                        raise RuntimeError(f"{runtime}: {done.stderr}")
        finally:
            kata.containerd.stop()
    w_kata, w_runc = statistics.median(wall[RUNTIME]), statistics.median(wall[RUNC])
    c_kata, c_runc = statistics.median(cpu[RUNTIME]), statistics.median(cpu[RUNC])
    print(f"date {time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} CPUs")
    print(f"ctr run --rm busybox true, median of {args.runs}:")
    print(f"  wall: kata {w_kata:.2f} s, runc {w_runc:.2f} s, ratio {w_kata / w_runc:.1f}")
    print(f"  machine CPU: kata {c_kata:.2f} s, runc {c_runc:.2f} s, ratio {c_kata / c_runc:.1f}")
    print(f"  kata runs: {', '.join(f'{s:.1f}' for s in wall[RUNTIME])} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
