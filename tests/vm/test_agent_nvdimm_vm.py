"""Persistent memory in our guest: an ext4 image given to QEMU as an NVDIMM (ACPI NFIT) is
``/dev/pmem0`` in the guest (Debian's kernel loads nfit + nd_pmem at boot), mounted by the
``nvdimm`` storage driver and read by a container."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from guest_containers import run_to_exit

from pykata.builder.build import Result
from pykata.host.ctl.run import HOSTNAME, SHARED_STORAGE
from pykata.host.ctl.session import open_session
from pykata.host.ctl.share import share_rootfs, unshare_rootfs
from pykata.host.ctl.spec import ProcessOptions, build_spec
from pykata.host.ctl.target import Target
from pykata.host.rootfs import make_busybox_rootfs
from pykata.host.vm.runner import VM
from pykata.protocols import agent_pb2, health_pb2, oci_pb2

pytestmark = [pytest.mark.vm, pytest.mark.root, pytest.mark.asyncio]

BOOT_TIMEOUT = 300.0
CALL_TIMEOUT = 120.0
MOUNT_POINT = "/run/kata-containers/sandbox/storage/pmem"


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Short: the VM's sockets live below it.
    with tempfile.TemporaryDirectory(prefix="pykata-nv-") as tmp:
        yield Path(tmp)


def ext4_image(path: Path, files: dict[str, str]) -> Path:
    tree = path.with_suffix(".d")
    tree.mkdir()
    for name, text in files.items():
        (tree / name).write_text(text)
    with open(path, "wb") as f:
        f.truncate(16 << 20)  # a multiple of 2 MiB, as an NVDIMM must be
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(path)], check=True)
    return path


async def test_nvdimm_storage_read_by_a_container(guest_artifacts: Result, workdir: Path) -> None:
    if shutil.which("mkfs.ext4") is None:
        pytest.fail("mkfs.ext4 is missing (e2fsprogs)")
    image = ext4_image(workdir / "pmem.img", {"hello.txt": "hello from pmem\n"})
    rootfs = make_busybox_rootfs(workdir / "rootfs")
    vm = VM(
        guest_artifacts.kernel,
        guest_artifacts.artifact,
        shared_dir=workdir / "shared",
        workdir=workdir / "vm",
        name=f"nv-{os.getpid()}",
        nvdimm=image,
    )
    async with vm:
        async with open_session(vm.agent_address, BOOT_TIMEOUT) as probe:
            await probe.client.call(
                "grpc.Health", "Check", health_pb2.CheckRequest(),
                health_pb2.HealthCheckResponse, timeout=BOOT_TIMEOUT,
            )  # fmt: skip
        async with open_session(vm.agent_address, CALL_TIMEOUT) as session:
            await session.agent_empty(
                "CreateSandbox",
                agent_pb2.CreateSandboxRequest(
                    hostname=HOSTNAME, sandbox_id=vm.name, storages=[SHARED_STORAGE]
                ),
            )
            target = Target(address=vm.agent_address, name=vm.name, shared_dir=vm.shared_dir)
            root, mount = share_rootfs(target, "nv", rootfs)
            spec = build_spec(
                ProcessOptions(
                    args=["sh", "-c", "cat /pmem/hello.txt; grep ' /pmem ' /proc/mounts"]
                ),
                root,
                HOSTNAME,
            )
            spec.Mounts.append(
                oci_pb2.Mount(
                    destination="/pmem", source=MOUNT_POINT, type="bind", options=["rbind"]
                )
            )
            storage = agent_pb2.Storage(
                driver="nvdimm", source="/dev/pmem0", fstype="ext4", mount_point=MOUNT_POINT
            )
            try:
                code, out = await run_to_exit(session, "nv", spec, storages=[storage])
            finally:
                unshare_rootfs(mount)
    assert code == 0, out
    first, *mounts = out.splitlines()
    assert first == "hello from pmem"
    assert mounts and mounts[0].split()[:3] == ["/dev/pmem0", "/pmem", "ext4"], out
    print(f"\npmem mount in the container: {mounts[0]}")
