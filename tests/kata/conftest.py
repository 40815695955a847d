"""The real Kata stack on our image: containerd (Debian) → the Kata Go shim → kata-clh → QEMU.

The shim is not ours and is not on PyPI or in Debian: `KATA_SHIM` names a folder holding
`containerd-shim-kata-v2` (or its `.zst`), which `.ci/run` points at the prebuilt Kata 3.30
shim. The guest is the VM tier's initrd (built or reused by kata-image).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from stack import Kata, ShimMissing, guest_artifacts, start_stack

from pykata.builder import build


@pytest.fixture(scope="session")
def guest() -> build.Result:
    return guest_artifacts()


@pytest.fixture(scope="module")
def kata(guest: build.Result, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kata]:
    try:
        stack = start_stack(guest, tmp_path_factory.mktemp("kata"), debug=True)
    except ShimMissing as exc:
        pytest.fail(str(exc))
    try:
        yield stack
    finally:
        stack.containerd.stop()
