"""The pieces of the Kata test stack: the shim from KATA_SHIM, and the running stack."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from containerd import Containerd

from pykata.builder import layout

SHIM = "containerd-shim-kata-v2"
RUNTIME = "io.containerd.kata.v2"


def shim_dir() -> Path:
    """The shim unpacked into our cache, by the digest of what KATA_SHIM holds."""
    source = os.environ.get("KATA_SHIM")
    if not source:
        pytest.fail(
            "KATA_SHIM is not set: point it at a folder with containerd-shim-kata-v2 or "
            "containerd-shim-kata-v2.zst (Kata 3.x); .ci/run sets it"
        )
    folder = Path(source)
    packed, plain = folder / f"{SHIM}.zst", folder / SHIM
    found = plain if plain.is_file() else packed
    if not found.is_file():
        pytest.fail(f"KATA_SHIM={folder} holds neither {SHIM} nor {SHIM}.zst")
    digest = hashlib.sha256(found.read_bytes()).hexdigest()[:16]
    target = layout.cache_root() / "kata-shim" / digest
    binary = target / SHIM
    if not binary.exists():
        target.mkdir(parents=True, exist_ok=True)
        partial = target / f"{SHIM}.partial"
        if found is packed:
            subprocess.run(["zstd", "-q", "-d", "-f", "-o", str(partial), str(packed)], check=True)
        else:
            shutil.copy2(plain, partial)
        partial.chmod(0o755)
        partial.rename(binary)
    return target


@dataclass
class Kata:
    containerd: Containerd
    image: str

    def run(
        self, name: str, *args: str, flags: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        """`ctr run --rm` of the busybox image under the Kata runtime."""
        return self.containerd.ctr(
            "run", "--rm", "--runtime", RUNTIME, *flags, self.image, name, *args
        )
