"""The OCI runtime runs from a sealed in-memory copy of its binary, made once per agent."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import pytest

from pykata.agent.container.runtime import SEALS, OciRuntime, sealed_copy
from pykata.agent.reaper import Reaper


def test_copy_is_sealed_like_crun_own_and_identical() -> None:
    binary = shutil.which("true")
    assert binary is not None
    fd = sealed_copy(binary)
    assert fd is not None
    try:
        # crun skips its own copy only for exactly these seals (cloned_binary.c).
        assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) == SEALS
        assert not os.get_inheritable(fd)
        with open(binary, "rb") as f:
            assert os.pread(fd, os.fstat(fd).st_size + 1, 0) == f.read()
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"x", 0)
    finally:
        os.close(fd)


async def test_runtime_commands_run_the_copy() -> None:
    reaper = Reaper()
    reaper.start()
    binary = shutil.which("sh")
    assert binary is not None
    runtime = OciRuntime(binary, reaper, no_pivot=False)
    try:
        # /proc/self/exe of the command is the memfd, argv[0] the installed path.
        code, out, _ = await reaper.run(
            [runtime.binary, "-c", 'readlink /proc/$$/exe; echo "$0"'],
            executable=runtime.executable,
        )
        exe, argv0 = out.decode().splitlines()
        assert code == 0
        assert exe.startswith("/memfd:runtime:sh")
        assert argv0 == binary
    finally:
        runtime.close()
        reaper.stop()
    assert runtime.executable == binary


def test_unreadable_binary_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        sealed_copy(os.path.join(tmp_path, "missing"))


def test_script_runs_from_its_file(tmp_path: Path) -> None:
    script = tmp_path / "crun"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    assert sealed_copy(str(script)) is None
