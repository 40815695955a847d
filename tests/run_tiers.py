"""Run test stages in order, print each stage's time and one closing summary line.

Usage: run_tiers.py STAGE... [-- PYTEST_ARGS...]
Stages: lint, kernel (build our guest kernel unless the cache holds it built from the
current kernel-config/; the VM tier boots it), unit, integration, security (adversarial
requests against the real agent, tests/security), vm.

Every stage runs even when an earlier one failed, so one CI run shows all breakage.
The last line is ``tests: N passed, N failed, N skipped`` over all pytest stages.
"""

from __future__ import annotations

import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SOURCES = ["agent", "host", "rootfs-builder", "tests", "protocols"]
LINT = [
    [PYTHON, "-m", "ruff", "check", *SOURCES],
    [PYTHON, "-m", "ruff", "format", "--check", *SOURCES],
    [PYTHON, "-m", "mypy"],
]


KATA_IMAGE = str(Path(PYTHON).parent / "kata-image")
KERNEL = [
    [KATA_IMAGE, "setup"],
    [KATA_IMAGE, "kernel", "--source", "build", "--output", str(ROOT / "build" / "kernel")],
]


def run_all(commands: list[list[str]]) -> bool:
    return all(subprocess.run(cmd, cwd=ROOT).returncode == 0 for cmd in commands)


def run_pytest(tier: str, extra: list[str], report: Path) -> tuple[bool, dict[str, int]]:
    cmd = [PYTHON, "-m", "pytest", f"tests/{tier}", f"--junitxml={report}", "-ra", *extra]
    rc = subprocess.run(cmd, cwd=ROOT).returncode
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    if report.exists():
        for suite in ET.parse(report).getroot().iter("testsuite"):
            total = int(suite.get("tests", 0))
            failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            skipped = int(suite.get("skipped", 0))
            counts["failed"] += failed
            counts["skipped"] += skipped
            counts["passed"] += total - failed - skipped
    # 5 = no tests collected: a tier may legitimately be empty while it is being built up.
    return rc in (0, 5), counts


def main(argv: list[str]) -> int:
    stages, extra = (
        (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    )
    reports = ROOT / ".cache" / "test-reports"
    reports.mkdir(parents=True, exist_ok=True)
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    timings: list[tuple[str, float, bool]] = []
    for stage in stages:
        print(f"\n===== stage {stage} =====", flush=True)
        t0 = time.monotonic()
        if stage == "lint":
            ok = run_all(LINT)
        elif stage == "kernel":
            ok = run_all(KERNEL)
        else:
            ok, counts = run_pytest(stage, extra, reports / f"{stage}.xml")
            for key, value in counts.items():
                totals[key] += value
        timings.append((stage, time.monotonic() - t0, ok))
    print("\n===== stage timings =====")
    for stage, seconds, ok in timings:
        print(f"{stage:<12} {seconds:8.1f}s  {'ok' if ok else 'FAILED'}")
    print(
        f"tests: {totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped"
    )
    return 0 if all(ok for _, _, ok in timings) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
