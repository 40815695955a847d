"""PID 1 helpers that can run anywhere: the modules-load.d reader."""

from __future__ import annotations

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
