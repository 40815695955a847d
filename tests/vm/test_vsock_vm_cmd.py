"""``kata-agent-ctl vm up|status|down`` on the vsock test guest (one short TCG boot)."""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from guest_echo.build import build_guest

from pykata.host.ctl import vm_cmd
from pykata.host.vm import state

pytestmark = [
    pytest.mark.vm,
]


def vm(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    vm_cmd.add_parser(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["vm", *argv])
    result: int = args.vm_handler(args)
    return result


@pytest.fixture
def runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="pykata-rt-") as tmp:
        monkeypatch.setenv("XDG_RUNTIME_DIR", tmp)
        yield Path(tmp)


def echo_over(address: str, line: bytes) -> bytes:
    assert address.startswith("hvsock://")
    path, _, _ = address.removeprefix("hvsock://").rpartition(":")
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(path)
        s.sendall(b"CONNECT 5000\n" + line)
        data = b""
        while data.count(b"\n") < 2:
            data += s.recv(4096)
    ok, echoed, _ = data.split(b"\n", 2)
    assert ok.startswith(b"OK ")
    return echoed + b"\n"


def test_vm_up_status_down(runtime_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    guest = build_guest()
    files = ["--kernel", str(guest.kernel), "--initrd", str(guest.initrd)]
    assert vm("up", "t1", *files, "--accel", "tcg", "--memory", "256", "--wait-port", "5000") == 0
    try:
        vm_state = state.load("t1")
        assert vm_state.workdir.startswith(str(runtime_dir))
        assert Path(vm_state.shared_dir) == state.default_shared_dir("t1")
        assert vm("up", "t1", *files) == 2  # already running
        capsys.readouterr()
        assert vm("status", "t1", "--json") == 0
        (shown,) = json.loads(capsys.readouterr().out)
        assert shown["running"] == {"qemu": True, "vsock": True, "virtiofsd": True}
        assert echo_over(vm_state.agent_address, b"via the state file\n") == (
            b"via the state file\n"
        )
        assert (Path(vm_state.shared_dir) / "guest-was-here").exists()
    finally:
        assert vm("down", "t1") == 0
    assert vm("status", "t1") == 2
    assert not vm_state.running() or not any(vm_state.running().values())
    assert not list(Path(vm_state.workdir).glob("*.sock"))


def test_vm_up_without_artifacts_is_a_usage_error(runtime_dir: Path) -> None:
    missing = str(runtime_dir / "missing")
    assert vm("up", "t2", "--kernel", missing, "--initrd", missing) == 2
    assert vm("down", "t2") == 2
