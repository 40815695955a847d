"""Where the builder's inputs live (the checkout) and where it keeps its caches."""

from __future__ import annotations

import os
from pathlib import Path

from pykata.builder.stages import BuildError

CHECKOUT = Path(__file__).resolve().parents[3]
ROOTFS_BUILDER = CHECKOUT / "rootfs-builder"
KERNEL_CONFIG = CHECKOUT / "kernel-config"
SYSTEMD_UNITS = CHECKOUT / "systemd-units"
REQUIRED_OPTIONS = KERNEL_CONFIG / "required.conf"
FRAGMENTS = KERNEL_CONFIG / "fragments"
DEBIAN_MODULES = KERNEL_CONFIG / "debian-modules.list"


def check_checkout() -> None:
    """kata-image reads its configuration from the repository it is installed from."""
    for folder in (ROOTFS_BUILDER, KERNEL_CONFIG, SYSTEMD_UNITS):
        if not folder.is_dir():
            raise BuildError(
                f"{folder} not found: kata-image runs from a checkout of the repository "
                "(pip install -e .)"
            )


def cache_root() -> Path:
    """Caches that survive between runs and fresh clones: ${XDG_CACHE_HOME:-~/.cache}/pykata."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pykata"


def fragments() -> list[Path]:
    """Kernel config fragments, applied in name order (base first)."""
    return sorted(FRAGMENTS.glob("*.conf"), key=lambda p: (p.name != "base.conf", p.name))
