"""The `image` flavour's disk: one msdos partition holding an ext4 root file system.

Kata's runtime boots an image with `root=/dev/vda1` (or pmem0p1), so the file system sits in
partition 1 rather than on the bare disk.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pykata.builder.stages import Stages

ALIGN = 1 << 20  # the partition starts at 1 MiB, like fdisk's default
# ext4 metadata and a little free space for the agent's runtime files (/run is tmpfs).
HEADROOM = 1.15
SLACK = 32 << 20


def tree_size(tree: Path) -> int:
    total = 0
    for path in tree.rglob("*"):
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def make_disk(tree: Path, disk: Path, stages: Stages) -> None:
    size = int(tree_size(tree) * HEADROOM) + SLACK
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
