"""The image flavour's disk: partition 1 at 1 MiB, an ext4 file system Kata can mount."""

from __future__ import annotations

import io
import struct
from pathlib import Path

from pykata.builder.disk import ALIGN, make_disk
from pykata.builder.stages import Stages

SUPERBLOCK = 1024
EXT4_MAGIC = 0xEF53
HAS_JOURNAL = 0x4  # s_feature_compat


def test_partition_holds_ext4_with_a_journal(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("guest\n")
    disk = tmp_path / "disk.img"
    make_disk(tree, disk, Stages(tmp_path / "log", out=io.StringIO()))
    data = disk.read_bytes()
    # One Linux partition starting at sector 2048 (msdos table entry 1).
    start_lba = struct.unpack_from("<I", data, 446 + 8)[0]
    assert data[446 + 4] == 0x83 and start_lba * 512 == ALIGN
    superblock = data[ALIGN + SUPERBLOCK : ALIGN + 2 * SUPERBLOCK]
    assert struct.unpack_from("<H", superblock, 0x38)[0] == EXT4_MAGIC
    # Kata mounts the root with rootflags=data=ordered, which ext4 refuses without a journal.
    assert struct.unpack_from("<I", superblock, 0x5C)[0] & HAS_JOURNAL
