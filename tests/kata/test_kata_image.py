"""The disk-image flavour through the unmodified Kata Go shim: kata-clh boots our kernel with
the image as a virtio-blk root (no nvdimm), systemd starts kata-agent.service through
kata-containers.target, and pods run as on the initrd (see conftest.py for the stack)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from stack import Kata, ShimMissing, image_artifacts, start_stack
from test_kata_pods import wait_gone


@pytest.fixture(scope="module")
def image_kata(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kata]:
    guest = image_artifacts()
    work = tmp_path_factory.mktemp("kata-image")
    try:
        stack = start_stack(guest, work, debug=True, flavour="image")
    except ShimMissing as exc:
        pytest.fail(str(exc))
    try:
        yield stack
    finally:
        stack.containerd.stop()


def test_pod_on_the_disk_image(image_kata: Kata) -> None:
    done = image_kata.run("on-image", "sh", "-c", "echo hello from the image; exit 3")
    assert done.returncode == 3, done.stderr
    assert done.stdout == "hello from the image\n"
    assert wait_gone(image_kata) == []


def test_the_guest_booted_the_image(image_kata: Kata) -> None:
    done = image_kata.run("booted", "cat", "/proc/cmdline")
    assert done.returncode == 0, done.stderr
    params = done.stdout.split()
    # The root is the disk image, its systemd aimed at the agent's target.
    assert any(p.startswith("root=") for p in params)
    assert "systemd.unit=kata-containers.target" in params
    assert "init_on_alloc=0" in params
    assert wait_gone(image_kata) == []
