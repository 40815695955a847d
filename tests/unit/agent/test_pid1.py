"""PID 1 helpers that can run anywhere: the modules-load.d reader, console fds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pykata.agent.pid1 import modules_to_load


def test_modules_load_d(tmp_path: Path) -> None:
    etc, lib = tmp_path / "etc", tmp_path / "lib"
    etc.mkdir()
    lib.mkdir()
    (lib / "10-kata.conf").write_text("# guest modules\nvirtio_fs\n; also\nvsock\n\n")
    (lib / "20-net.conf").write_text("virtio_net\nvirtio_fs\n")
    (lib / "30-over.conf").write_text("from_lib\n")
    (etc / "30-over.conf").write_text("  from_etc  \n")  # /etc overrides the same name
    (etc / "ignored.txt").write_text("not_a_conf\n")
    assert modules_to_load([str(etc), str(lib)]) == [
        "virtio_fs",
        "vsock",
        "virtio_net",
        "from_etc",
    ]


def test_no_directories(tmp_path: Path) -> None:
    assert modules_to_load([str(tmp_path / "none")]) == []


def test_missing_stdio_gets_the_console(tmp_path: Path) -> None:
    console = tmp_path / "console"
    console.touch()
    code = (
        "import sys; from pykata.agent.pid1 import ensure_console; "
        f"ensure_console({str(console)!r}); print('out'); print('err', file=sys.stderr)"
    )
    # Started with stdout and stderr closed, as init is when /dev/console is missing.
    done = subprocess.run(
        ["sh", "-c", 'exec "$0" -c "$1" >&- 2>&-', sys.executable, code], timeout=30
    )
    assert done.returncode == 0
    assert console.read_text() == "out\nerr\n"
