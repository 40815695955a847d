"""VM fixtures shared by the tests that boot our guest.

`guest_artifacts` builds the initrd flavour with Debian's cloud kernel once per session
into ${XDG_CACHE_HOME:-~/.cache}/pykata/test-artifacts; kata-image skips the build entirely
when the inputs' hash is unchanged, so warm runs (and later CI runs on this machine) reuse it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pykata.builder import build, layout
from pykata.builder.stages import Stages


@pytest.fixture(autouse=True)
def _qemu_installed() -> None:
    """Every test here boots QEMU; a missing one is a broken setup, not a reason to skip."""
    if shutil.which("qemu-system-x86_64") is None:
        pytest.fail("qemu-system-x86_64 is missing: `just setup` installs it")


def artifacts_dir() -> Path:
    return layout.cache_root() / "test-artifacts" / "initrd-debian"


@pytest.fixture(scope="session")
def guest_artifacts() -> build.Result:
    """Kernel + initrd (agent as /init) ready to boot, built or reused once per session:
    `.kernel`, `.artifact` (the initrd), `.manifest`, `.reused`."""
    if os.geteuid() != 0:
        pytest.fail("building the guest image needs root (mkosi installs packages as root)")
    output = artifacts_dir()
    stages = Stages(output / "kata-image.log")
    build.setup(None, stages)
    return build.build(build.Options(flavour="initrd", output=output), stages)
