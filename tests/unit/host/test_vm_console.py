"""The VM's console on QEMU's command line: a log file, or also a FIFO to stream it from
(``console_pipe``), which the VM's clean-up removes with its sockets."""

from __future__ import annotations

import os
from pathlib import Path

from machine_spec import spec

from pykata.host.vm import qemu
from pykata.host.vm.runner import CONSOLE_FIFOS, VM, remove_sockets


def chardev(cmd: list[str]) -> str:
    (value,) = [
        cmd[i + 1] for i, a in enumerate(cmd) if a == "-chardev" and "id=console" in cmd[i + 1]
    ]
    return value


def test_console_is_a_log_file_by_default() -> None:
    assert chardev(qemu.command(spec())) == "file,id=console,path=/w/console.log"


def test_console_pipe_keeps_the_log_file() -> None:
    cmd = qemu.command(spec(console_pipe=Path("/w/console.pipe")))
    assert chardev(cmd) == "pipe,id=console,path=/w/console.pipe,logfile=/w/console.log"
    assert cmd[cmd.index("-serial") + 1] == "chardev:console"


def test_console_fifos_go_with_the_sockets(tmp_path: Path) -> None:
    vm = VM(Path("/k"), Path("/i"), workdir=tmp_path, console_pipe=True)
    assert vm.console_stream == tmp_path / "console.pipe.out"
    for name in CONSOLE_FIFOS:
        os.mkfifo(tmp_path / name)
    remove_sockets(tmp_path)
    assert list(tmp_path.iterdir()) == []
