"""Hot-plugged disks in our guest: block storages found by PCI path and SCSI address, a raw
disk passed as a container device with the guest's numbers, a swap disk.

ONE VM (three empty PCIe root ports and a virtio-scsi controller) serves the module. Disks are
hot-plugged over QMP after CreateSandbox, as the Kata runtime does: an ext4 image behind root
port hp0 (PCI path ``10/00``), a raw disk behind hp1 (``11/00``), a swap area (mkswap) behind
hp2 (``12/00``) and an ext4 image as SCSI target 1 LUN 0 (``1:0``).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from guest_containers import run_to_exit

from pykata.builder.build import Result
from pykata.host.ctl.run import HOSTNAME, SHARED_STORAGE
from pykata.host.ctl.session import Session, open_session
from pykata.host.ctl.share import share_rootfs, unshare_rootfs
from pykata.host.ctl.spec import ProcessOptions, build_spec
from pykata.host.ctl.target import Target
from pykata.host.rootfs import make_busybox_rootfs
from pykata.host.vm.runner import VM
from pykata.protocols import agent_pb2, health_pb2, oci_pb2
from pykata.ttrpc.errors import AlreadyExists, DeadlineExceeded, InvalidArgument

pytestmark = [pytest.mark.vm, pytest.mark.root, pytest.mark.asyncio(loop_scope="module")]

BOOT_TIMEOUT = 300.0
CALL_TIMEOUT = 120.0
RAW_MARKER = b"PYKATA-RAW-DISK\n"
HOTPLUG_TIMEOUT = 15
STORAGE_BASE = "/run/kata-containers/sandbox/storage"


def ext4_image(path: Path, content: dict[str, str]) -> Path:
    tree = path.with_suffix(".d")
    tree.mkdir()
    for name, text in content.items():
        (tree / name).write_text(text)
    with open(path, "wb") as f:
        f.truncate(16 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"pykata-dev-{os.getpid()}"
    path.mkdir(exist_ok=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vm(guest_artifacts: Result, workdir: Path) -> AsyncIterator[VM]:
    machine = VM(
        guest_artifacts.kernel,
        guest_artifacts.artifact,
        shared_dir=workdir / "shared",
        workdir=workdir / "vm",
        name=f"dev-{os.getpid()}",
        hotplug_ports=3,
        scsi=True,
        # Under TCG a hot-plugged SCSI disk takes seconds to probe.
        append=f"agent.hotplug_timeout={HOTPLUG_TIMEOUT}",
    )
    async with machine:
        yield machine


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def session(vm: VM) -> AsyncIterator[Session]:
    async with open_session(vm.agent_address, BOOT_TIMEOUT) as probe:
        await probe.client.call(
            "grpc.Health", "Check", health_pb2.CheckRequest(),
            health_pb2.HealthCheckResponse, timeout=BOOT_TIMEOUT,
        )  # fmt: skip
    async with open_session(vm.agent_address, CALL_TIMEOUT) as opened:
        await opened.agent_empty(
            "CreateSandbox",
            agent_pb2.CreateSandboxRequest(
                hostname=HOSTNAME, sandbox_id=vm.name, storages=[SHARED_STORAGE]
            ),
        )
        yield opened


async def hotplug_disk(vm: VM, image: Path, node: str, device: dict[str, object]) -> None:
    await vm.qmp(
        "blockdev-add",
        driver="raw",
        **{"node-name": node},
        file={"driver": "file", "filename": str(image)},
    )
    await vm.qmp("device_add", drive=node, id=f"dev-{node}", **device)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def disks(vm: VM, session: Session, workdir: Path) -> None:
    ext4 = ext4_image(workdir / "data.img", {"hello.txt": "hello from a hot-plugged disk\n"})
    raw = workdir / "raw.img"
    raw.write_bytes(RAW_MARKER + bytes((1 << 20) - len(RAW_MARKER)))
    await hotplug_disk(vm, ext4, "data", {"driver": "virtio-blk-pci", "bus": "hp0", "addr": "0"})
    await hotplug_disk(vm, raw, "raw", {"driver": "virtio-blk-pci", "bus": "hp1", "addr": "0"})


async def run(
    session: Session,
    vm: VM,
    rootfs: Path,
    script: str,
    *,
    storages: list[agent_pb2.Storage] = (),  # type: ignore[assignment]
    devices: list[agent_pb2.Device] = (),  # type: ignore[assignment]
    mounts: list[oci_pb2.Mount] = (),  # type: ignore[assignment]
    linux_devices: list[oci_pb2.LinuxDevice] = (),  # type: ignore[assignment]
) -> tuple[int, str]:
    """A container running ``sh -c script``: exit code and output."""
    cid = f"dev-{secrets.token_hex(4)}"
    target = Target(address=vm.agent_address, name=vm.name, shared_dir=vm.shared_dir)
    root, mount = share_rootfs(target, cid, rootfs)
    spec = build_spec(ProcessOptions(args=["sh", "-c", script]), root, HOSTNAME)
    spec.Mounts.extend(mounts)
    spec.Linux.Devices.extend(linux_devices)
    spec.Linux.Resources.Devices.add(Allow=False, Access="rwm")
    for dev in linux_devices:  # the host's numbers, as the runtime writes them
        spec.Linux.Resources.Devices.add(
            Allow=True, Type=dev.Type, Major=dev.Major, Minor=dev.Minor, Access="rwm"
        )
    try:
        return await run_to_exit(session, cid, spec, storages=storages, devices=devices)
    finally:
        unshare_rootfs(mount)


@pytest.fixture(scope="module")
def rootfs(workdir: Path) -> Path:
    return make_busybox_rootfs(workdir / "rootfs")


def bind(source: str, destination: str) -> oci_pb2.Mount:
    return oci_pb2.Mount(destination=destination, source=source, type="bind", options=["rbind"])


async def test_guest_details_list_the_block_drivers(session: Session) -> None:
    details = await session.agent(
        "GetGuestDetails", agent_pb2.GuestDetailsRequest(), agent_pb2.GuestDetailsResponse
    )
    for driver in ("blk", "virtio-blk-pci", "mmioblk", "scsi", "nvdimm"):
        assert driver in details.agent_details.storage_handlers


async def test_blk_storage_by_pci_path(session: Session, vm: VM, rootfs: Path, disks: None) -> None:
    t0 = time.monotonic()
    point = f"{STORAGE_BASE}/data"
    storage = agent_pb2.Storage(driver="blk", source="10/00", fstype="ext4", mount_point=point)
    code, out = await run(
        session, vm, rootfs, "cat /data/hello.txt; grep -c ' /data ' /proc/mounts",
        storages=[storage], mounts=[bind(point, "/data")],
    )  # fmt: skip
    assert (code, out) == (0, "hello from a hot-plugged disk\n1\n")
    print(f"\nblk storage container: {time.monotonic() - t0:.1f}s")


async def test_scsi_disk_plugged_while_the_agent_waits(
    session: Session, vm: VM, rootfs: Path, workdir: Path
) -> None:
    """Not there when CreateContainer starts: found by its uevent, not by the sysfs scan."""
    scsi = ext4_image(workdir / "scsi.img", {"scsi.txt": "hello over scsi\n"})
    point = f"{STORAGE_BASE}/scsi"
    storage = agent_pb2.Storage(driver="scsi", source="1:0", fstype="ext4", mount_point=point)
    created = asyncio.ensure_future(
        run(session, vm, rootfs, "cat /s/scsi.txt", storages=[storage], mounts=[bind(point, "/s")])
    )
    await asyncio.sleep(2)
    assert not created.done()
    await hotplug_disk(
        vm, scsi, "scsi", {"driver": "scsi-hd", "bus": "scsi0.0", "scsi-id": 1, "lun": 0}
    )
    assert await created == (0, "hello over scsi\n")


async def test_raw_device_has_the_guest_numbers(
    session: Session, vm: VM, rootfs: Path, disks: None
) -> None:
    # 8:16 is what a host would have called it; the guest's virtio disk is numbered otherwise.
    host = oci_pb2.LinuxDevice(Path="/dev/xvdb", Type="b", Major=8, Minor=16, FileMode=0o660)
    device = agent_pb2.Device(id="11/00", type="blk", container_path="/dev/xvdb")
    script = "stat -c '%t:%T' /dev/xvdb; ls /sys/dev/block; head -c 16 /dev/xvdb"
    code, out = await run(session, vm, rootfs, script, devices=[device], linux_devices=[host])
    assert code == 0, out
    numbers, *rest = out.splitlines()
    major, minor = (int(n, 16) for n in numbers.split(":"))
    assert major != 8
    assert f"{major}:{minor}" in rest  # the guest's own disk
    assert out.endswith(RAW_MARKER.decode())  # and the device cgroup lets the container read it


async def test_missing_device_and_unknown_type(session: Session, vm: VM, rootfs: Path) -> None:
    storage = agent_pb2.Storage(
        driver="blk", source="11/05", fstype="ext4", mount_point=f"{STORAGE_BASE}/none"
    )
    with pytest.raises(DeadlineExceeded, match=r"after 15s waiting for .* PCI path 11/05"):
        await run(session, vm, rootfs, "true", storages=[storage])
    vfio = agent_pb2.Device(id="0000:01:00.0", type="vfio-pci", container_path="/dev/vfio/1")
    with pytest.raises(InvalidArgument, match="vfio-pci"):
        await run(session, vm, rootfs, "true", devices=[vfio])


def swap_image(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkswap", "-q", str(path)], check=True)
    return path


async def test_swap_on_a_hot_plugged_disk(
    session: Session, vm: VM, rootfs: Path, workdir: Path, disks: None
) -> None:
    image = swap_image(workdir / "swap.img", 8 << 20)
    await hotplug_disk(vm, image, "swap", {"driver": "virtio-blk-pci", "bus": "hp2", "addr": "0"})
    await session.agent_empty("AddSwap", agent_pb2.AddSwapRequest(PCIPath=[0x12, 0x00]))
    code, out = await run(session, vm, rootfs, "tail -n +2 /proc/swaps; ls /sys/block")
    assert code == 0
    swaps, *names = out.splitlines()
    node, kind, size_kib = swaps.split()[:3]
    assert kind == "partition" and 7000 < int(size_kib) <= 8192
    # The same disk again, by PCI path or by node: already swapping.
    with pytest.raises(AlreadyExists):
        await session.agent_empty("AddSwap", agent_pb2.AddSwapRequest(PCIPath=[0x12, 0x00]))
    with pytest.raises(AlreadyExists):
        await session.agent_empty("AddSwapPath", agent_pb2.AddSwapPathRequest(path=node))
    # Another disk, with no swap area on it.
    other = next(f"/dev/{n}" for n in names if n.startswith("vd") and f"/dev/{n}" != node)
    with pytest.raises(InvalidArgument, match="no swap area"):
        await session.agent_empty("AddSwapPath", agent_pb2.AddSwapPathRequest(path=other))
