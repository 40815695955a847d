"""`just kata-demo`: the unmodified Kata shim under containerd runs busybox pods on our image.

containerd (in a mount namespace of its own) → containerd-shim-kata-v2 (from KATA_SHIM) →
kata-clh (the Cloud Hypervisor API, answered with QEMU) → our kernel + initrd → kata-agent.
"""

from __future__ import annotations

import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stack import RUNTIME, ShimMissing, guest_artifacts, start_stack


def step(what: str, t0: float) -> None:
    print(f"  {what} ({time.monotonic() - t0:.1f} s)", flush=True)


def main() -> int:
    t0 = time.monotonic()
    print("guest image (built or reused by kata-image)", flush=True)
    guest = guest_artifacts()
    step(f"{guest.kernel} + {guest.artifact}", t0)
    with tempfile.TemporaryDirectory(prefix="pykata-kata-demo-") as tmp:
        try:
            kata = start_stack(guest, Path(tmp))
        except ShimMissing as exc:
            print(exc, file=sys.stderr)
            return 2
        ctr = kata.containerd.ctr
        try:
            step("containerd up, busybox image imported", t0)
            t1 = time.monotonic()
            done = kata.run("demo-run", "sh", "-c", "echo hello from a Kata pod; uname -r; exit 3")
            print(done.stdout.rstrip())
            step(f"ctr run --rm --runtime {RUNTIME}: exit code {done.returncode}", t1)
            t1 = time.monotonic()
            ctr("run", "-d", "--runtime", RUNTIME, kata.image, "demo-pod", "sleep", "600")
            step("ctr run -d: a pod left running", t1)
            t1 = time.monotonic()
            # Through a terminal: ctr task exec with a finite stdin waits forever (upstream).
            command = [*kata.containerd.ctr_command(), "task", "exec", "-t", "--exec-id", "demo",
                       "demo-pod", "sh", "-c", "ps; exit 4"]  # fmt: skip
            done = kata.containerd.in_namespace("script", "-qec", shlex.join(command), "/dev/null")
            print(done.stdout.replace("\r", "").rstrip())
            step(f"ctr task exec: exit code {done.returncode}", t1)
            t1 = time.monotonic()
            ctr("task", "kill", "-s", "SIGKILL", "demo-pod")
            while "STOPPED" not in ctr("task", "ls").stdout:
                time.sleep(0.2)
            ctr("task", "delete", "demo-pod")
            ctr("container", "delete", "demo-pod")
            step("ctr task kill + delete: the pod VM is gone", t1)
        finally:
            kata.containerd.stop()
    step("done", t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
