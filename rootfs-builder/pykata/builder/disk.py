"""The `image` flavour's disk: one msdos partition holding an ext4 root file system.

Kata's runtime boots an image with `root=/dev/vda1` (or pmem0p1), so the file system sits in
partition 1 rather than on the bare disk.
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
    size = int(tree_blocks(tree) * (1 + METADATA)) + SLACK
    size = (size + ALIGN - 1) // ALIGN * ALIGN
    fs = disk.with_suffix(".ext4")
    fs.unlink(missing_ok=True)
    stages.run(
        ["mkfs.ext4", "-q", "-F", "-L", "kata-root", "-d", tree, "-m", "0",
         "-O", "^has_journal", fs, f"{size // 1024}k"]
    )  # fmt: skip
    with disk.open("wb") as out:
        out.truncate(ALIGN + size)
    stages.run(["sfdisk", "-q", disk], input_text=f"start={ALIGN // 512}, type=83\n")
    with fs.open("rb") as src, disk.open("r+b") as dst:
        dst.seek(ALIGN)
        shutil.copyfileobj(src, dst, 1 << 20)
    fs.unlink()
