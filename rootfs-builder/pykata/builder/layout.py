"""Where the builder's inputs live (package data) and where it keeps its caches.

The mkosi configuration, the kernel config fragments and the systemd units ship inside this
package under ``data/``; in a checkout those entries link to ``rootfs-builder/mkosi``,
``kernel-config/`` and ``systemd-units/``, so an editable install and a wheel read the same
paths.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
MKOSI_CONFIG = DATA / "mkosi"
KERNEL_CONFIG = DATA / "kernel-config"
SYSTEMD_UNITS = DATA / "systemd-units"
REQUIRED_OPTIONS = KERNEL_CONFIG / "required.conf"
FRAGMENTS = KERNEL_CONFIG / "fragments"
DEBIAN_MODULES = KERNEL_CONFIG / "debian-modules.list"


def cache_root() -> Path:
    """Caches that survive between runs and fresh clones: ${XDG_CACHE_HOME:-~/.cache}/pykata."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pykata"


def fragments() -> list[Path]:
    """Kernel config fragments, applied in name order (base first)."""
    return sorted(FRAGMENTS.glob("*.conf"), key=lambda p: (p.name != "base.conf", p.name))
