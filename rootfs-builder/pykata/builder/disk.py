"""The `image` flavour's disk: one msdos partition holding an ext4 root file system.

Kata's runtime boots an image with `root=/dev/vda1` (or pmem0p1), so the file system sits in
partition 1 rather than on the bare disk. It mounts it with `rootflags=data=ordered,...`,
which ext4 refuses without a journal: the file system keeps a small one, as Kata's own
image builder's does (the root is mounted read-only, so it is never written).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pykata.builder.stages import Stages

ALIGN = 1 << 20  # the partition starts at 1 MiB, like fdisk's default
BLOCK = 4096
# ext4 metadata (inode tables, bitmaps, directories) on top of the data blocks, plus a little
# room: the root is mounted read-only and the agent writes to tmpfs.
METADATA = 0.10
SLACK = 16 << 20
JOURNAL = 4 << 20  # mke2fs' smallest: 1024 blocks of 4 KiB


def tree_blocks(tree: Path) -> int:
    """Bytes the tree's files and directories occupy in whole file system blocks."""
    total = 0
    for path in tree.rglob("*"):
        if path.is_symlink():
            continue
        size = BLOCK if path.is_dir() else path.stat().st_size
        total += (size + BLOCK - 1) // BLOCK * BLOCK
    return total


def make_disk(tree: Path, disk: Path, stages: Stages) -> None:
    size = int(tree_blocks(tree) * (1 + METADATA)) + SLACK + JOURNAL
    size = (size + ALIGN - 1) // ALIGN * ALIGN
    fs = disk.with_suffix(".ext4")
    fs.unlink(missing_ok=True)
    stages.run(
        ["mkfs.ext4", "-q", "-F", "-L", "kata-root", "-d", tree, "-m", "0",
         "-J", f"size={JOURNAL >> 20}", fs, f"{size // 1024}k"]
    )  # fmt: skip
    with disk.open("wb") as out:
        out.truncate(ALIGN + size)
    stages.run(["sfdisk", "-q", disk], input_text=f"start={ALIGN // 512}, type=83\n")
    with fs.open("rb") as src, disk.open("r+b") as dst:
        dst.seek(ALIGN)
        shutil.copyfileobj(src, dst, 1 << 20)
    fs.unlink()
