"""Host-given paths, storage options and ids against the real agent (root process).

Every attack is one request a hostile or careless host could send. The host can plant
symlinks in the shared dir with CopyFile; the attacks aim through them (and by ``..``, long
names, options and reserved ids) at a sentinel tree outside /run/kata-containers. After each
one the sentinel tree is byte-for-byte as it was, nothing named after this run exists in /,
/etc, /tmp or /var/tmp, and the agent answered with a refusal (never UNKNOWN) or, where the
request is legitimate, did it inside the shared dir. The last test checks Health.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pykata.agent.rpc.convert.oci import from_dict
from pykata.protocols import agent_pb2, csi_pb2, health_pb2, oci_pb2
from pykata.ttrpc import Client
from pykata.ttrpc.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    TtrpcError,
)

pytestmark = pytest.mark.root

BASE = "/run/kata-containers"
SHARED = f"{BASE}/shared/containers"
RUN = f"pykata-sec-{secrets.token_hex(3)}"
MINE = f"{SHARED}/{RUN}"  # this run's corner of the shared dir
SANDBOX_STORAGE = f"{BASE}/sandbox/{RUN}"
SENTINEL = Path(f"/var/tmp/{RUN}-sentinel")  # made by the fixture below
REFUSED = (InvalidArgument, NotFound, FailedPrecondition, PermissionDenied)
WATCHED = ("/", "/etc", "/tmp", "/var/tmp")


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes | str]]:
    out: dict[str, tuple[int, int, bytes | str]] = {}
    for directory, dirs, files in os.walk(root):
        for name in [*dirs, *files, "."]:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                content: bytes | str = Path(path).read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            else:
                content = b""
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_mtime_ns, content)
    return out


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def is_link(path: str) -> bool:
    return os.path.islink(path)


def write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def strays() -> list[str]:
    """Anything named after this run outside the sentinel and /run/kata-containers."""
    found = []
    for directory in WATCHED:
        for name in os.listdir(directory):
            if RUN in name and os.path.join(directory, name) != str(SENTINEL):
                found.append(os.path.join(directory, name))
    return found


@pytest.fixture(scope="module", autouse=True)
def sentinel() -> Iterator[dict[str, tuple[int, int, bytes | str]]]:
    SENTINEL.mkdir(mode=0o700)
    (SENTINEL / "victim").write_text("sentinel file")
    (SENTINEL / "dir").mkdir()
    (SENTINEL / "dir" / "inner").write_text("sentinel inner")
    os.chmod(SENTINEL, 0o750)
    before = snapshot(SENTINEL)
    try:
        yield before
    finally:
        shutil.rmtree(SENTINEL, ignore_errors=True)
        shutil.rmtree(MINE, ignore_errors=True)
        shutil.rmtree(SANDBOX_STORAGE, ignore_errors=True)


@pytest.fixture(autouse=True)
def nothing_escapes(sentinel: dict[str, tuple[int, int, bytes | str]]) -> Iterator[None]:
    yield
    assert snapshot(SENTINEL) == sentinel, "the sentinel tree outside the sandbox changed"
    assert strays() == [], "something was made outside /run/kata-containers"


def copy_req(
    path: str, data: bytes = b"x", *, kind: int = stat.S_IFREG, offset: int = 0, size: int = -1
) -> agent_pb2.CopyFileRequest:
    return agent_pb2.CopyFileRequest(
        path=path,
        file_size=len(data) if size < 0 else size,
        file_mode=kind | 0o644,
        dir_mode=0o755,
        uid=-1,
        gid=-1,
        offset=offset,
        data=data,
    )


def link(name: str, target: str) -> agent_pb2.CopyFileRequest:
    return copy_req(f"{MINE}/{name}", target.encode(), kind=stat.S_IFLNK)


# Symlinks the host plants first, all pointing outside.
PLANTED = {
    "to-sentinel": str(SENTINEL),
    "to-victim": str(SENTINEL / "victim"),
    "to-etc": "/etc",
    "to-root": "/",
    "rel-up": "../../../../../var/tmp",
    "victim.tmp": str(SENTINEL / "victim"),
}


def storage(driver: str, mount_point: str, **fields: Any) -> agent_pb2.Storage:
    return agent_pb2.Storage(driver=driver, mount_point=mount_point, **fields)


def sandbox_with(*storages: agent_pb2.Storage) -> tuple[str, Any]:
    return "CreateSandbox", agent_pb2.CreateSandboxRequest(storages=list(storages))


def overlay(mount_point: str, *options: str, driver_options: tuple[str, ...] = ()) -> Any:
    return sandbox_with(
        storage(
            "overlayfs",
            mount_point,
            options=list(options),
            driver_options=list(driver_options),
            fstype="overlay",
        )
    )


LOWER = f"{MINE}/lower"
UPPER = f"{MINE}/upper"
WORK = f"{MINE}/work"
CREATE_DIR = "io.katacontainers.volume.overlayfs.create_directory="
SENT = str(SENTINEL)


@dataclass(frozen=True)
class Attack:
    name: str
    request: Callable[[], tuple[str, Any]]
    expect: tuple[type[TtrpcError], ...] = REFUSED
    match: str = ""  # the refusal's reason, where other checks could refuse it first


# Storages, sent in CreateSandbox before the sandbox exists (each one is refused whole).
STORAGE_ATTACKS = [
    Attack(
        "local-mount-point-through-planted-symlink",
        lambda: sandbox_with(storage("local", f"{MINE}/to-sentinel/{RUN}-made/deeper")),
    ),
    Attack(
        "local-mount-point-is-planted-symlink",
        lambda: sandbox_with(storage("local", f"{MINE}/to-sentinel", options=["mode=0777"])),
    ),
    Attack(
        "local-fsgid-through-symlink",
        lambda: sandbox_with(storage("local", f"{MINE}/to-sentinel", options=["fsgid=1234"])),
    ),
    Attack(
        "local-mount-point-dotdot",
        lambda: sandbox_with(storage("local", f"{BASE}/../../var/tmp/{RUN}-dotdot")),
    ),
    Attack(
        "local-mount-point-outside",
        lambda: sandbox_with(storage("local", f"/var/tmp/{RUN}-outside")),
    ),
    Attack(
        "local-mount-point-relative-link",
        lambda: sandbox_with(storage("local", f"{MINE}/rel-up/{RUN}-rel")),
    ),
    Attack(
        "mount-point-nul-byte",
        lambda: sandbox_with(storage("local", f"{MINE}/a\0/../../../../var/tmp/{RUN}")),
    ),
    Attack(
        "mount-point-name-too-long",
        lambda: sandbox_with(storage("local", f"{MINE}/{'n' * 300}")),
    ),
    Attack(
        "ephemeral-through-planted-symlink",
        lambda: sandbox_with(storage("ephemeral", f"{MINE}/to-sentinel/{RUN}-eph", source="tmpfs")),
    ),
    Attack(
        "ephemeral-over-etc-through-symlink",
        lambda: sandbox_with(storage("ephemeral", f"{MINE}/to-etc", source="tmpfs")),
    ),
    Attack(
        "ephemeral-hugetlbfs-through-symlink",
        lambda: sandbox_with(
            storage(
                "ephemeral",
                f"{MINE}/to-sentinel/{RUN}-huge",
                fstype="hugetlbfs",
                options=["pagesize=2097152", "size=0"],
            )
        ),
    ),
    Attack(
        "ephemeral-bind-of-a-guest-path",
        lambda: sandbox_with(storage("ephemeral", f"{MINE}/bound", source=SENT, options=["bind"])),
        match="bind, rbind",
    ),
    Attack(
        "ephemeral-rbind-of-root",
        lambda: sandbox_with(storage("ephemeral", f"{MINE}/bound", source="/", options=["rbind"])),
        match="bind, rbind",
    ),
    Attack(
        "ephemeral-remount-of-what-is-there",
        lambda: sandbox_with(storage("ephemeral", SHARED, source="tmpfs", options=["remount,ro"])),
        match="bind, rbind",
    ),
    Attack(
        "ephemeral-propagation-change",
        lambda: sandbox_with(storage("ephemeral", f"{MINE}/prop", options=["rshared"])),
        match="bind, rbind",
    ),
    Attack(
        "virtiofs-bind-of-a-guest-path",
        lambda: sandbox_with(storage("virtio-fs", f"{MINE}/vfs", source=SENT, options=["bind"])),
        match="bind, rbind",
    ),
    Attack(
        "virtiofs-through-planted-symlink",
        lambda: sandbox_with(storage("virtio-fs", f"{MINE}/to-sentinel/vfs", source="tag")),
    ),
    Attack(
        "blk-bind-of-a-guest-path",
        lambda: sandbox_with(
            storage("blk", f"{MINE}/blk", source="/dev/null", fstype="ext4", options=["bind"])
        ),
        match="bind, rbind",
    ),
    Attack("overlay-lowerdir-outside", lambda: overlay(f"{MINE}/ov", f"lowerdir={SENT}")),
    Attack(
        "overlay-lowerdir-through-symlink",
        lambda: overlay(f"{MINE}/ov", f"lowerdir={MINE}/to-sentinel"),
    ),
    Attack(
        "overlay-second-lowerdir-through-symlink",
        lambda: overlay(f"{MINE}/ov", f"lowerdir={LOWER}:{MINE}/to-etc"),
    ),
    Attack(
        "overlay-upperdir-through-symlink",
        lambda: overlay(
            f"{MINE}/ov",
            f"lowerdir={LOWER}",
            f"upperdir={MINE}/to-sentinel/dir",
            f"workdir={WORK}",
        ),
    ),
    Attack(
        "overlay-workdir-outside",
        lambda: overlay(
            f"{MINE}/ov", f"lowerdir={LOWER}", f"upperdir={UPPER}", f"workdir={SENT}/dir"
        ),
    ),
    Attack(
        "overlay-escaped-colon-in-lowerdir",
        lambda: overlay(f"{MINE}/ov", f"lowerdir={LOWER}\\:{SENT}"),
    ),
    Attack(
        "overlay-create-directory-through-symlink",
        lambda: overlay(
            f"{MINE}/ov",
            f"lowerdir={LOWER}",
            driver_options=(f"{CREATE_DIR}{MINE}/to-sentinel/{RUN}-created",),
        ),
    ),
    Attack(
        "overlay-create-directory-outside",
        lambda: overlay(
            f"{MINE}/ov",
            f"lowerdir={LOWER}",
            driver_options=(f"{CREATE_DIR}/var/tmp/{RUN}-created",),
        ),
    ),
    Attack(
        "overlay-mount-point-through-symlink",
        lambda: overlay(f"{MINE}/to-sentinel/ov", f"lowerdir={LOWER}"),
    ),
    Attack(
        "overlay-bind-option",
        lambda: overlay(f"{MINE}/ov", f"lowerdir={LOWER}", "bind"),
        match="bind, rbind",
    ),
    Attack(
        "watchable-bind-source-outside",
        lambda: sandbox_with(storage("watchable-bind", f"{MINE}/w", source="/etc")),
    ),
    Attack(
        "watchable-bind-source-through-symlink",
        lambda: sandbox_with(storage("watchable-bind", f"{MINE}/w", source=f"{MINE}/to-sentinel")),
    ),
    Attack(
        "watchable-bind-single-file-through-symlink",
        lambda: sandbox_with(storage("watchable-bind", f"{MINE}/w", source=f"{MINE}/to-victim")),
    ),
    Attack(
        "watchable-bind-mount-point-through-symlink",
        lambda: sandbox_with(
            storage("watchable-bind", f"{MINE}/to-sentinel/{RUN}-w", source=f"{MINE}/lower")
        ),
    ),
    Attack(
        "watchable-bind-file-mount-point-is-symlink",
        lambda: sandbox_with(
            storage("watchable-bind", f"{MINE}/to-victim", source=f"{MINE}/lower/file")
        ),
    ),
]


@pytest.fixture(scope="module")
def planted(agent_address: str, agent_process: Any) -> None:
    """The host's preparations, through CopyFile like any host: symlinks out, layer dirs."""

    async def plant() -> None:
        async with await Client.connect(agent_address) as client:
            stub: Any = client.stub(agent_pb2.DESCRIPTOR.services_by_name["AgentService"])
            for name, target in PLANTED.items():
                await stub.CopyFile(link(name, target))
            for directory in (LOWER, UPPER, WORK):
                await stub.CopyFile(copy_req(directory, kind=stat.S_IFDIR))
            await stub.CopyFile(copy_req(f"{LOWER}/file", b"lower"))

    asyncio.run(plant())


async def attempt(agent: Any, attack: Attack) -> None:
    method, request = attack.request()
    with pytest.raises(attack.expect) as caught:
        await getattr(agent, method)(request, timeout=30)
    assert caught.value.code.name != "UNKNOWN"
    assert re.search(attack.match, str(caught.value)), str(caught.value)


@pytest.mark.parametrize("attack", STORAGE_ATTACKS, ids=lambda a: a.name)
async def test_storage_attack(agent: Any, planted: None, attack: Attack) -> None:
    await attempt(agent, attack)


async def test_create_sandbox(agent: Any, planted: None) -> None:
    await agent.CreateSandbox(
        agent_pb2.CreateSandboxRequest(
            hostname="sec",
            sandbox_id=RUN,
            storages=[
                # A mount inside a shared-dir directory: CopyFile must never delete across it.
                storage("ephemeral", f"{MINE}/victim-dir/mnt", source="tmpfs", options=["size=1m"])
            ],
        ),
        timeout=30,
    )
    write(f"{MINE}/victim-dir/mnt/keep", b"kept")


def spec_with(cid: str, mounts: list[dict[str, Any]]) -> Any:
    return from_dict(
        {
            "ociVersion": "1.0.2",
            "process": {"args": ["true"], "cwd": "/"},
            "root": {"path": f"{MINE}/{cid}/rootfs"},
            "mounts": mounts,
            "linux": {"namespaces": [{"type": "mount"}]},
        },
        oci_pb2.Spec(),
    )


def container(cid: str, *mounts: dict[str, Any], storages: tuple[Any, ...] = ()) -> Any:
    return "CreateContainer", agent_pb2.CreateContainerRequest(
        container_id=cid, exec_id=cid, OCI=spec_with(cid, list(mounts)), storages=list(storages)
    )


def bind_mount(source: str, *options: str, kind: str = "bind") -> dict[str, Any]:
    return {"destination": "/x", "type": kind, "source": source, "options": list(options)}


def stats(path: str) -> tuple[str, Any]:
    return "GetVolumeStats", agent_pb2.VolumeStatsRequest(volume_guest_path=path)


def copy(request: agent_pb2.CopyFileRequest) -> tuple[str, Any]:
    return "CopyFile", request


# Once the sandbox exists: CopyFile, GetVolumeStats, containers, ephemeral updates.
SANDBOX_ATTACKS = [
    Attack("copyfile-outside-the-shared-dir", lambda: copy(copy_req(f"/var/tmp/{RUN}-cf"))),
    Attack(
        "copyfile-dotdot",
        lambda: copy(copy_req(f"{SHARED}/../../../../var/tmp/{RUN}-cf")),
    ),
    Attack("copyfile-relative", lambda: copy(copy_req(f"{RUN}-relative"))),
    Attack("copyfile-nul-byte", lambda: copy(copy_req(f"{MINE}/a\0b"))),
    Attack("copyfile-the-root-itself", lambda: copy(copy_req(SHARED, kind=stat.S_IFDIR))),
    Attack(
        "copyfile-through-planted-symlink",
        lambda: copy(copy_req(f"{MINE}/to-sentinel/{RUN}-through")),
    ),
    Attack(
        "copyfile-dir-through-planted-symlink",
        lambda: copy(copy_req(f"{MINE}/to-sentinel/{RUN}-d", kind=stat.S_IFDIR)),
    ),
    Attack(
        "copyfile-through-relative-symlink",
        lambda: copy(copy_req(f"{MINE}/rel-up/{RUN}-rel")),
    ),
    Attack(
        "copyfile-chunk-into-planted-tmp-symlink",
        lambda: copy(copy_req(f"{MINE}/victim", b"abc", size=6)),
    ),
    Attack("copyfile-name-too-long", lambda: copy(copy_req(f"{MINE}/{'n' * 300}"))),
    Attack("copyfile-path-too-long", lambda: copy(copy_req(f"{MINE}/" + "p/" * 2100 + "f"))),
    Attack(
        "copyfile-chunk-beyond-size",
        lambda: copy(copy_req(f"{MINE}/big", b"abc", offset=10, size=4)),
    ),
    Attack(
        "copyfile-device-node",
        lambda: copy(copy_req(f"{MINE}/dev", b"", kind=stat.S_IFCHR)),
    ),
    Attack(
        "copyfile-file-over-a-directory-with-a-mount",
        lambda: copy(copy_req(f"{MINE}/victim-dir", b"replaced")),
        (FailedPrecondition,),
    ),
    Attack(
        "copyfile-symlink-over-a-directory-with-a-mount",
        lambda: copy(copy_req(f"{MINE}/victim-dir", b"/etc", kind=stat.S_IFLNK)),
        (FailedPrecondition,),
    ),
    Attack(
        "copyfile-into-a-storage-mounted-below-the-shared-dir",
        lambda: copy(copy_req(f"{MINE}/victim-dir/mnt/keep", b"overwritten")),
        match="another mount",
    ),
    Attack("volume-stats-through-planted-symlink", lambda: stats(f"{MINE}/to-sentinel")),
    Attack("volume-stats-of-etc-through-symlink", lambda: stats(f"{MINE}/to-etc")),
    Attack("volume-stats-outside", lambda: stats("/etc")),
    Attack("volume-stats-dotdot", lambda: stats(f"{BASE}/../../etc")),
    Attack("volume-stats-existence-oracle", lambda: stats(f"{MINE}/to-root/etc/shadow")),
    Attack("container-id-sandbox", lambda: container("sandbox")),
    Attack("container-id-shared", lambda: container("shared")),
    Attack("container-id-dotdot", lambda: container("..")),
    Attack("container-bind-source-etc", lambda: container(f"{RUN}-c1", bind_mount("/etc"))),
    Attack("container-bind-source-root", lambda: container(f"{RUN}-c2", bind_mount("/"))),
    Attack(
        "container-rbind-option-of-a-guest-path",
        lambda: container(f"{RUN}-c3", bind_mount(SENT, "rbind", kind="none")),
    ),
    Attack(
        "container-bind-through-planted-symlink",
        lambda: container(f"{RUN}-c4", bind_mount(f"{MINE}/to-sentinel")),
    ),
    Attack(
        "container-bind-relative-source",
        lambda: container(f"{RUN}-c5", bind_mount("etc")),
    ),
    Attack(
        "container-bind-dev-shm-dotdot",
        lambda: container(f"{RUN}-c6", bind_mount("/dev/shm/../../etc")),
    ),
    Attack(
        "container-bind-kata-dotdot",
        lambda: container(f"{RUN}-c7", bind_mount(f"{BASE}/../etc")),
    ),
    Attack(
        "container-storage-through-planted-symlink",
        lambda: container(
            f"{RUN}-c8", storages=(storage("local", f"{MINE}/to-sentinel/{RUN}-c8"),)
        ),
    ),
    Attack(
        "update-ephemeral-through-planted-symlink",
        lambda: (
            "UpdateEphemeralMounts",
            agent_pb2.UpdateEphemeralMountsRequest(
                storages=[storage("ephemeral", f"{MINE}/to-sentinel/{RUN}-u", source="tmpfs")]
            ),
        ),
    ),
    Attack(
        "update-ephemeral-bind-remount",
        lambda: (
            "UpdateEphemeralMounts",
            agent_pb2.UpdateEphemeralMountsRequest(
                storages=[
                    storage(
                        "ephemeral", f"{MINE}/victim-dir/mnt", source="tmpfs", options=["bind,ro"]
                    )
                ]
            ),
        ),
        match="bind, rbind",
    ),
]


@pytest.mark.parametrize("attack", SANDBOX_ATTACKS, ids=lambda a: a.name)
async def test_sandbox_attack(agent: Any, attack: Attack) -> None:
    await attempt(agent, attack)
    assert read(f"{MINE}/victim-dir/mnt/keep") == b"kept"


async def test_file_over_a_planted_symlink_replaces_the_link(agent: Any) -> None:
    await agent.CopyFile(copy_req(f"{MINE}/to-victim", b"replaced"))
    assert read(f"{MINE}/to-victim") == b"replaced"
    assert not is_link(f"{MINE}/to-victim")


async def test_deep_tree_replaced_by_a_file(agent: Any) -> None:
    deep = f"{MINE}/deep/" + "d/" * 1500 + "f"
    await agent.CopyFile(copy_req(deep, b"leaf"))
    await agent.CopyFile(copy_req(f"{MINE}/deep", b"flat"))
    assert read(f"{MINE}/deep") == b"flat"


async def test_volume_stats_inside_still_work(agent: Any) -> None:
    resp = await agent.GetVolumeStats(stats(f"{MINE}/victim-dir/mnt")[1])
    assert resp.usage[0].unit == csi_pb2.VolumeUsage.BYTES and resp.usage[0].total > 0


def test_enough_attacks() -> None:
    assert len(STORAGE_ATTACKS) + len(SANDBOX_ATTACKS) >= 40
    names = [a.name for a in STORAGE_ATTACKS + SANDBOX_ATTACKS]
    assert len(set(names)) == len(names)


async def test_health_after_all(health: Any) -> None:
    resp = await health.Check(health_pb2.CheckRequest())
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
