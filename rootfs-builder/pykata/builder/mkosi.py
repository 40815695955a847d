"""Find or install mkosi >= 25 and run it.

Debian bookworm ships mkosi 14, too old for this configuration. mkosi is pure Python
(architecture `all`), so trixie's package is downloaded and unpacked into the cache and run
with the host's Python: no system-wide upgrade, nothing fetched outside the package archive.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pykata.builder.apt import KEYRING, PrivateApt
from pykata.builder.stages import BuildError, Stages

MINIMUM = (25,)
# Host tools mkosi calls for our configuration (apt/dpkg install, cpio+zstd archive,
# depmod), the `image` flavour's disk (ext4, partition table) and the Debian archive keyring
# (Ubuntu hosts lack it by default).
HOST_TOOLS = {
    str(KEYRING): "debian-archive-keyring",
    "apt-get": "apt",
    "dpkg": "dpkg",
    "cpio": "cpio",
    "zstd": "zstd",
    "depmod": "kmod",
    "mkfs.ext4": "e2fsprogs",
    "xz": "xz-utils",
    "sfdisk": "fdisk",
}


def parse_version(text: str) -> tuple[int, ...]:
    """`mkosi 25.3` (or `25.3`, `26~devel`) -> (25, 3)."""
    match = re.search(r"(\d+(?:\.\d+)*)", text)
    if not match:
        raise BuildError(f"cannot parse a mkosi version from {text!r}")
    return tuple(int(part) for part in match.group(1).split("."))


@dataclass(frozen=True)
class Mkosi:
    """How to invoke mkosi: the command prefix and the environment it needs."""

    argv: tuple[str, ...]
    version: tuple[int, ...]
    pythonpath: str | None = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
        return env

    @property
    def version_text(self) -> str:
        return ".".join(str(part) for part in self.version)


def host_mkosi() -> Mkosi | None:
    """The host's mkosi if it is new enough."""
    path = shutil.which("mkosi")
    if path is None:
        return None
    proc = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return None
    version = parse_version(proc.stdout)
    return Mkosi((path,), version) if version >= MINIMUM else None


def private_mkosi(root: Path) -> Mkosi | None:
    """A mkosi previously unpacked under root by `install`."""
    stamp = root / "version"
    if not stamp.is_file():
        return None
    site = root / "tree/usr/lib/python3/dist-packages"
    # mkosi needs Python >= 3.9: the interpreter running kata-image will do.
    return Mkosi((sys.executable, "-m", "mkosi"), parse_version(stamp.read_text()), str(site))


def install(root: Path, apt: PrivateApt, stages: Stages) -> Mkosi:
    """Download trixie's mkosi package and unpack it under root."""
    apt.update()
    (deb,) = apt.download(["mkosi"], root / "debs")
    tree = root / "tree"
    if tree.exists():
        shutil.rmtree(tree)
    stages.run(["dpkg-deb", "-x", deb, tree])
    version = apt.show("mkosi")["Version"]
    (root / "version").write_text(version + "\n")
    found = private_mkosi(root)
    assert found is not None
    if found.version < MINIMUM:
        raise BuildError(f"mkosi {version} from {deb.name} is older than 25")
    return found


def locate(root: Path) -> Mkosi:
    """The mkosi to use: the host's when >= 25, else the one `kata-image setup` unpacked."""
    found = host_mkosi() or private_mkosi(root)
    if found is None:
        raise BuildError("mkosi >= 25 not found: run `kata-image setup` first")
    return found
