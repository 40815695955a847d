"""kata-agent-ctl against the real agent (a root process on this host, over a unix socket).

The tests share one agent (module scope) and run in file order: the sandbox the first `run`
creates is used by the following tests and destroyed by the last one.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import secrets
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

CTL = [sys.executable, "-m", "pykata.host.ctl.main"]
# Container folders live in the host's /run/kata-containers: ids unique to this run.
RUN = secrets.token_hex(3)
ECHO_ID, LONG_ID, TRAP_ID, INT_ID = (
    f"ctl-{name}-{RUN}" for name in ("echo", "long", "trap", "int")
)


class Ctl:
    """Runs the real CLI against the test agent; its state files go to a private folder."""

    def __init__(self, address: str, runtime_dir: Path) -> None:
        self.address = address
        self.env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir)}

    def argv(self, verb: str, args: tuple[str, ...]) -> list[str]:
        return [*CTL, verb, "--server-address", self.address, *args]

    def __call__(self, verb: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(verb, args),
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
        )

    def start(self, verb: str, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(verb, args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )


@pytest.fixture(scope="module")
def ctl(
    agent_process: subprocess.Popen[bytes],
    agent_address: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Ctl:
    return Ctl(agent_address, tmp_path_factory.mktemp("ctl-runtime"))


def shared_mounts(container_id: str) -> list[str]:
    """Host mounts made for the container (other tests may share the host's folder)."""
    path = f"/run/kata-containers/shared/containers/{container_id}/"
    with open("/proc/self/mountinfo") as mountinfo:
        return [line for line in mountinfo if path in line]


def ps_running(ctl: Ctl) -> str:
    return "\n".join(line for line in ctl("ps").stdout.splitlines() if " running " in line)


def wait_listed(ctl: Ctl, container_id: str) -> None:
    """Until `ps` shows the container running (its `run` has created and started it)."""
    deadline = time.monotonic() + 60
    while f"{container_id} " not in ps_running(ctl):
        assert time.monotonic() < deadline, f"{container_id} never showed up in ps"
        time.sleep(0.2)


def test_connect_check(ctl: Ctl) -> None:
    done = ctl("connect", "-c", "Check", "-c", "Version")
    assert done.returncode == 0, done.stderr
    decoder = json.JSONDecoder()
    check, end = decoder.raw_decode(done.stdout)
    version, _ = decoder.raw_decode(done.stdout[end:].lstrip())
    assert check == {"status": "SERVING"}
    assert version["agent_version"]


def test_connect_bad_method_exits_2(ctl: Ctl) -> None:
    done = ctl("connect", "-c", "NoSuchMethod")
    assert done.returncode == 2
    assert "unknown method 'NoSuchMethod'" in done.stderr


def test_connect_not_found_exits_1_with_code_name(ctl: Ctl) -> None:
    done = ctl("connect", "-c", 'StatsContainer json://{"container_id": "nosuchcontainer"}')
    assert done.returncode == 1
    assert "StatsContainer: NOT_FOUND" in done.stderr


def test_run_echo(ctl: Ctl, busybox_rootfs: Path) -> None:
    done = ctl("run", "--id", ECHO_ID, str(busybox_rootfs), "--", "echo", "hi")
    assert (done.returncode, done.stdout) == (0, "hi\n"), done.stderr
    assert shared_mounts(ECHO_ID) == []
    assert not Path(f"/run/kata-containers/shared/containers/{ECHO_ID}").exists()


def test_run_returns_exit_code_and_separates_stderr(ctl: Ctl, busybox_rootfs: Path) -> None:
    done = ctl("run", str(busybox_rootfs), "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert done.returncode == 3
    assert done.stdout == "out\n"
    assert done.stderr == "err\n"


def test_run_env_and_cwd(ctl: Ctl, busybox_rootfs: Path) -> None:
    args = ["-e", "GREETING=hi there", "-w", "/tmp", str(busybox_rootfs)]
    done = ctl("run", *args, "--", "sh", "-c", 'echo "$GREETING from $(pwd) $PATH"')
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("hi there from /tmp /usr/local/sbin:")


def set_size(fd: int, rows: int, columns: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


def read_until(fd: int, marker: bytes, nudge: bytes = b"") -> bytes:
    """Terminal output up to marker; `nudge` is typed every second meanwhile."""
    data = b""
    deadline = time.monotonic() + 60
    while marker not in data:
        assert time.monotonic() < deadline, f"no {marker!r} in {data!r}"
        if select.select([fd], [], [], 1.0)[0]:
            data += os.read(fd, 4096)
        elif nudge:
            os.write(fd, nudge)
    return data


def test_run_tty_keystrokes_and_resize(ctl: Ctl, busybox_rootfs: Path) -> None:
    """`run -t` from a real terminal: its size, keystrokes in, SIGWINCH -> TtyWinResize."""
    primary, secondary = pty.openpty()
    set_size(secondary, 30, 100)
    script = "stty size; while read line; do [ $line = q ] && exit 5; stty size; done"
    proc = subprocess.Popen(
        ctl.argv("run", ("-t", str(busybox_rootfs), "--", "sh", "-c", script)),
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env=ctl.env,
        start_new_session=True,
    )
    try:
        os.close(secondary)
        assert b"30 100" in read_until(primary, b"30 100")
        set_size(primary, 41, 132)
        proc.send_signal(signal.SIGWINCH)
        # Enter until the shell reports the new size (the resize is an RPC of its own).
        assert b"41 132" in read_until(primary, b"41 132", nudge=b"\r")
        os.write(primary, b"q\r")
        assert proc.wait(timeout=60) == 5
    finally:
        proc.kill()
        proc.wait()
        os.close(primary)


def test_run_forwards_stdin(ctl: Ctl, busybox_rootfs: Path) -> None:
    data = "".join(f"line {n}\n" for n in range(2000))
    done = ctl("run", "-i", str(busybox_rootfs), "--", "sh", "-c", "cat; exit 7", stdin=data)
    assert done.returncode == 7, done.stderr
    assert done.stdout == data


def test_run_without_interactive_gives_eof_on_stdin(ctl: Ctl, busybox_rootfs: Path) -> None:
    done = ctl("run", str(busybox_rootfs), "--", "cat", stdin="ignored\n")
    assert (done.returncode, done.stdout) == (0, "")


def test_exec_ps_and_stop(ctl: Ctl, busybox_rootfs: Path, tmp_path: Path) -> None:
    runner = ctl.start("run", "--id", LONG_ID, str(busybox_rootfs), "--", "sleep", "300")
    try:
        wait_listed(ctl, LONG_ID)
        ps = ctl("ps")
        assert "sleep 300" in ps.stdout and "running" in ps.stdout
        done = ctl("exec", LONG_ID, "--", "sh", "-c", "echo from exec; exit 5")
        assert (done.returncode, done.stdout) == (5, "from exec\n"), done.stderr
        assert ctl("exec", "nosuchcontainer", "--", "true").returncode == 125
        # A second run with the same id fails, and must not take the first container down:
        # from this CLI's state, and from another state file where only the agent knows it.
        assert ctl("run", "--id", LONG_ID, str(busybox_rootfs), "--", "true").returncode == 125
        other = Ctl(ctl.address, tmp_path)
        done = other("run", "--id", LONG_ID, str(busybox_rootfs), "--", "true")
        assert done.returncode == 125
        assert "in use" in done.stderr
        assert ctl("exec", LONG_ID, "--", "true").returncode == 0
        assert ctl("stop", LONG_ID, "--time", "5").returncode == 0
        # The container's init ignores SIGTERM (PID 1 without a handler): it gets SIGKILL.
        assert runner.wait(timeout=60) == 137
    finally:
        runner.kill()
        runner.communicate()
    assert LONG_ID not in ctl("ps").stdout
    assert shared_mounts(LONG_ID) == []


def test_run_forwards_signals(ctl: Ctl, busybox_rootfs: Path) -> None:
    script = "trap 'exit 42' INT; echo ready; while :; do sleep 0.1; done"
    runner = ctl.start("run", "--id", TRAP_ID, str(busybox_rootfs), "--", "sh", "-c", script)
    try:
        assert runner.stdout is not None
        assert runner.stdout.readline() == "ready\n"
        runner.send_signal(signal.SIGINT)
        assert runner.wait(timeout=60) == 42
    finally:
        runner.kill()
        runner.communicate()


def test_second_interrupt_kills(ctl: Ctl, busybox_rootfs: Path) -> None:
    runner = ctl.start("run", "--id", INT_ID, str(busybox_rootfs), "--", "sleep", "300")
    try:
        wait_listed(ctl, INT_ID)
        # sleep as the container's init has no SIGINT handler, so the first one is ignored.
        runner.send_signal(signal.SIGINT)
        time.sleep(1)  # two signals sent at once would merge into one pending signal
        runner.send_signal(signal.SIGINT)
        assert runner.wait(timeout=60) == 137
    finally:
        runner.kill()
        runner.communicate()


def test_destroy(ctl: Ctl) -> None:
    assert "sandbox: -" not in ctl("ps").stdout
    done = ctl("destroy")
    assert done.returncode == 0, done.stderr
    assert "sandbox: -" in ctl("ps").stdout
