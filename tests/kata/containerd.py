"""containerd from Debian, started for a test in a mount namespace of its own.

The namespace gets a fresh /run (the Kata shim's /run/vc and /run/kata-containers, and the
syslog socket the shim insists on, live and die there), a writable /sys/fs/cgroup when the
host's top level is a read-only tmpfs (the host's hierarchies bound into a fresh tmpfs; the
shim's sandbox cgroups in them are real and removed with the sandbox), and nothing of the
machine is remounted. containerd's own root, state and socket are in the
test's folder; `ctr` runs inside the same namespace (nsenter), so the FIFOs it makes for stdio
are the ones the shim opens. The CRI plugin is off.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

NAMESPACE = "pykata-test"
START_TIMEOUT = 30.0

_SETUP = r"""
mount -t tmpfs -o mode=755 run /run
mkdir -p /run/lock
touch /run/syslog
mount --bind "$WORK/syslog.sock" /run/syslog
if ! mkdir /sys/fs/cgroup/.pykata-probe 2>/dev/null; then
    mkdir -p "$WORK/host-cgroup"
    mount --rbind /sys/fs/cgroup "$WORK/host-cgroup"
    mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
    for hierarchy in "$WORK"/host-cgroup/*; do
        name=${hierarchy##*/}
        if [ -L "$hierarchy" ]; then
            ln -s "$(readlink "$hierarchy")" "/sys/fs/cgroup/$name"
        elif mountpoint -q "$hierarchy"; then
            mkdir "/sys/fs/cgroup/$name"
            mount --rbind "$hierarchy" "/sys/fs/cgroup/$name"
        else
            # A controller this machine does not mount (e.g. net_cls): the shim still
            # makes its folder there, so it gets a plain writable one.
            mkdir "/sys/fs/cgroup/$name"
        fi
    done
else
    rmdir /sys/fs/cgroup/.pykata-probe
fi
exec containerd --config "$WORK/config.toml"
"""

_CONFIG = """version = 2
root = "{work}/root"
state = "{work}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{work}/containerd.sock"

[debug]
  level = "info"
"""


class SyslogSink:
    """A datagram socket standing in for the machine's syslog: the Kata shim refuses to start
    without one. What it receives is kept in a file for failed tests to show."""

    def __init__(self, path: Path, log: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.log = log
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with self.log.open("ab") as out:
            while True:
                try:
                    data = self.sock.recv(65536)
                except OSError:
                    return
                out.write(data.rstrip(b"\n") + b"\n")
                out.flush()

    def close(self) -> None:
        self.sock.close()


class Containerd:
    def __init__(self, work: Path, path_dirs: list[Path], env: dict[str, str]) -> None:
        self.work = work
        self.socket = work / "containerd.sock"
        self._path_dirs = path_dirs
        self._env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.syslog: SyslogSink | None = None

    @property
    def log(self) -> Path:
        return self.work / "containerd.log"

    def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "config.toml").write_text(_CONFIG.format(work=self.work))
        self.syslog = SyslogSink(self.work / "syslog.sock", self.work / "syslog.log")
        path = os.pathsep.join([*map(str, self._path_dirs), os.environ["PATH"]])
        env = {**os.environ, **self._env, "PATH": path, "WORK": str(self.work)}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-euc", _SETUP],
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def ctr_command(self) -> list[str]:
        return ["ctr", "--address", str(self.socket), "--namespace", NAMESPACE]

    def ctr(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """`ctr` in containerd's mount namespace, with no stdin."""
        assert self.process is not None
        command = ["nsenter", "-t", str(self.process.pid), "-m", "--", *self.ctr_command(), *args]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )

    def in_namespace(self, *command: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """A command in containerd's mount namespace (its /run, its ctr FIFOs)."""
        assert self.process is not None
        return subprocess.run(
            ["nsenter", "-t", str(self.process.pid), "-m", "--", *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def mount_namespace(self) -> str:
        assert self.process is not None
        return os.readlink(f"/proc/{self.process.pid}/ns/mnt")

    def shims(self) -> list[int]:
        """Shim processes serving this containerd (they outlive it by design)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            is_shim = cmdline[0].endswith((b"containerd-shim-kata-v2", b"containerd-shim-runc-v2"))
            if is_shim and str(self.socket).encode() in cmdline:
                pids.append(int(entry.name))
        return pids

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pid in self.shims():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.syslog is not None:
            self.syslog.close()
        remove_namespace_cgroups()


# Parents the Kata shim makes in the host's hierarchies (sandbox cgroups go below them).
KATA_PARENTS = ("kata_overhead",)


def remove_namespace_cgroups() -> None:
    """containerd and the shims put cgroups below /<namespace> (and the Kata shim below
    /kata_overhead) in every hierarchy and leave those folders; they are ours, so they go
    (rmdir: only empty cgroups can)."""
    tops = [
        top
        for name in (NAMESPACE, *KATA_PARENTS)
        for top in Path("/sys/fs/cgroup").glob(f"*/{name}")
    ]
    for top in tops:
        for folder in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if folder.is_dir():
                with contextlib.suppress(OSError):
                    folder.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()
