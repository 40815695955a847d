"""kata-virtiofsd started the way the Kata shim starts virtiofsd: a listening socket passed
as an fd and the Rust daemon's flags; the host's daemon must answer vhost-user on it."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
from pathlib import Path

KATA_VIRTIOFSD = Path(sys.executable).parent / "kata-virtiofsd"
VHOST_USER_GET_FEATURES = 1
VHOST_USER_VERSION = 0x1
VHOST_USER_REPLY = 0x4
VIRTIO_F_VERSION_1 = 1 << 32


def test_shim_style_start_answers_vhost_user(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    path = str(tmp_path / "vfsd.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        fd = listener.fileno()
        args = ["--syslog", "--cache=auto", f"--shared-dir={shared}", f"--fd={fd}",
                "--thread-pool-size=1", "--announce-submounts"]  # fmt: skip
        daemon = subprocess.Popen(
            [str(KATA_VIRTIOFSD), *args], pass_fds=[fd], stderr=subprocess.PIPE
        )
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(20)
            conn.connect(path)
            conn.sendall(struct.pack("<III", VHOST_USER_GET_FEATURES, VHOST_USER_VERSION, 0))
            reply = b""
            while len(reply) < 20:
                chunk = conn.recv(20 - len(reply))
                assert chunk, "virtiofsd closed the connection"
                reply += chunk
        request, flags, size, features = struct.unpack("<IIIQ", reply)
        assert (request, size) == (VHOST_USER_GET_FEATURES, 8)
        assert flags & VHOST_USER_REPLY
        assert features & VIRTIO_F_VERSION_1
    finally:
        daemon.kill()
        daemon.communicate(timeout=10)


def test_refuses_unknown_flags(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(KATA_VIRTIOFSD), f"--shared-dir={tmp_path}", "--inode-file-handles=mandatory"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "unsupported virtiofsd flag '--inode-file-handles=mandatory'" in done.stderr
