"""Confinement regressions through the real agent, one per attack of the study (items 1-6
and 11 of "Confinement and robustness"). The host plants symlinks with CopyFile, then aims
requests through them at a directory outside /run/kata-containers, which must stay as it
was. The exhaustive adversarial set is tests/security/test_paths.py."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pykata.agent.mount import fstype_of
from pykata.agent.rpc.convert.oci import from_dict
from pykata.protocols import agent_pb2, oci_pb2
from pykata.ttrpc import Client
from pykata.ttrpc.errors import FailedPrecondition, InvalidArgument, NotFound

pytestmark = pytest.mark.root

BASE = "/run/kata-containers"
RUN = f"pykata-conf-{secrets.token_hex(3)}"
MINE = f"{BASE}/shared/containers/{RUN}"
OUTSIDE = Path(f"/var/tmp/{RUN}-outside")  # made by the fixture below
WATCHED = f"{MINE}/configmap"
WATCH_POINT = f"{MINE}/watchable"


def listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def is_file(path: str) -> bool:
    return os.path.isfile(path)


def write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def copy_req(path: str, data: bytes = b"x", *, kind: int = stat.S_IFREG, size: int = -1) -> Any:
    return agent_pb2.CopyFileRequest(
        path=path,
        file_size=len(data) if size < 0 else size,
        file_mode=kind | 0o644,
        dir_mode=0o755,
        uid=-1,
        gid=-1,
        data=data,
    )


@pytest.fixture(scope="module", autouse=True)
def outside() -> Iterator[None]:
    OUTSIDE.mkdir(mode=0o700)
    (OUTSIDE / "victim").write_text("outside")
    yield
    try:
        assert listing(OUTSIDE) == ["victim"] and (OUTSIDE / "victim").read_text() == "outside"
    finally:
        shutil.rmtree(OUTSIDE, ignore_errors=True)
        shutil.rmtree(MINE, ignore_errors=True)


@pytest.fixture(scope="module")
def planted(agent_address: str, agent_process: Any) -> None:
    async def plant() -> None:
        async with await Client.connect(agent_address) as client:
            stub: Any = client.stub(agent_pb2.DESCRIPTOR.services_by_name["AgentService"])
            await stub.CopyFile(copy_req(f"{MINE}/out", str(OUTSIDE).encode(), kind=stat.S_IFLNK))
            await stub.CopyFile(copy_req(f"{MINE}/lower", kind=stat.S_IFDIR))
            await stub.CopyFile(copy_req(f"{WATCHED}/d", str(OUTSIDE).encode(), kind=stat.S_IFLNK))

    asyncio.run(plant())


def untouched() -> bool:
    return listing(OUTSIDE) == ["victim"]


async def test_copyfile_symlink_and_local_storage_through_it_make_no_directory_outside(
    agent: Any, planted: None
) -> None:
    for driver in ("local", "ephemeral"):
        with pytest.raises(InvalidArgument, match="symlink"):
            await agent.CreateSandbox(
                agent_pb2.CreateSandboxRequest(
                    storages=[
                        agent_pb2.Storage(driver=driver, mount_point=f"{MINE}/out/made/deeper")
                    ]
                )
            )
        assert untouched()


async def test_overlay_create_directory_through_symlink_makes_nothing(
    agent: Any, planted: None
) -> None:
    with pytest.raises(InvalidArgument, match="create_directory"):
        await agent.CreateSandbox(
            agent_pb2.CreateSandboxRequest(
                storages=[
                    agent_pb2.Storage(
                        driver="overlayfs",
                        options=[f"lowerdir={MINE}/lower"],
                        driver_options=[
                            f"io.katacontainers.volume.overlayfs.create_directory={MINE}/out/made"
                        ],
                        mount_point=f"{MINE}/merged",
                    )
                ]
            )
        )
    assert untouched()


async def test_bind_option_turns_no_storage_into_a_bind_of_a_guest_path(
    agent: Any, planted: None
) -> None:
    for driver, option in (("ephemeral", "bind"), ("virtio-fs", "rbind"), ("overlayfs", "bind")):
        with pytest.raises(InvalidArgument, match="bind, rbind"):
            await agent.CreateSandbox(
                agent_pb2.CreateSandboxRequest(
                    storages=[
                        agent_pb2.Storage(
                            driver=driver,
                            source=str(OUTSIDE),
                            options=[option, f"lowerdir={MINE}/lower"],
                            mount_point=f"{MINE}/bound",
                        )
                    ]
                )
            )
    assert fstype_of(f"{MINE}/bound") is None


async def test_overlay_lowerdir_through_symlink_reaches_nothing(agent: Any, planted: None) -> None:
    with pytest.raises(InvalidArgument, match="lowerdir"):
        await agent.CreateSandbox(
            agent_pb2.CreateSandboxRequest(
                storages=[
                    agent_pb2.Storage(
                        driver="overlayfs",
                        options=[f"lowerdir={MINE}/out"],
                        mount_point=f"{MINE}/merged",
                    )
                ]
            )
        )


async def test_create_sandbox(agent: Any, planted: None) -> None:
    await agent.CreateSandbox(
        agent_pb2.CreateSandboxRequest(
            sandbox_id=RUN,
            storages=[
                agent_pb2.Storage(driver="watchable-bind", source=WATCHED, mount_point=WATCH_POINT),
                agent_pb2.Storage(
                    driver="ephemeral", source="tmpfs", mount_point=f"{MINE}/dir/mnt"
                ),
            ],
        ),
        timeout=30,
    )
    assert os.readlink(f"{WATCH_POINT}/d") == str(OUTSIDE)
    write(f"{MINE}/dir/mnt/keep", b"kept")


async def test_watchable_sync_does_not_follow_a_symlink_turned_directory(agent: Any) -> None:
    await agent.CopyFile(copy_req(f"{WATCHED}/d", kind=stat.S_IFDIR))
    await agent.CopyFile(copy_req(f"{WATCHED}/d/planted", b"through the link?"))
    for _ in range(50):
        await asyncio.sleep(0.1)
        if is_file(f"{WATCH_POINT}/d/planted"):
            break
    assert read(f"{WATCH_POINT}/d/planted") == b"through the link?"
    assert untouched()


async def test_volume_stats_through_symlink_is_refused(agent: Any) -> None:
    with pytest.raises(InvalidArgument, match="symlink"):
        await agent.GetVolumeStats(agent_pb2.VolumeStatsRequest(volume_guest_path=f"{MINE}/out"))


async def test_oci_bind_source_outside_is_refused(agent: Any) -> None:
    spec = {
        "process": {"args": ["true"], "cwd": "/"},
        "root": {"path": f"{MINE}/c/rootfs"},
        "mounts": [{"destination": "/x", "type": "bind", "source": "/etc"}],
        "linux": {"namespaces": [{"type": "mount"}]},
    }
    with pytest.raises(InvalidArgument, match="bind source '/etc'"):
        await agent.CreateContainer(
            agent_pb2.CreateContainerRequest(
                container_id=f"{RUN}-c", OCI=from_dict(spec, oci_pb2.Spec())
            )
        )


async def test_copyfile_file_over_a_directory_with_a_mount_deletes_nothing(agent: Any) -> None:
    with pytest.raises(FailedPrecondition, match="mount"):
        await agent.CopyFile(copy_req(f"{MINE}/dir", b"file"))
    assert read(f"{MINE}/dir/mnt/keep") == b"kept"


async def test_container_id_sandbox_is_refused_and_the_sandbox_state_stays(agent: Any) -> None:
    with pytest.raises(NotFound):  # it can never have been created
        await agent.RemoveContainer(agent_pb2.RemoveContainerRequest(container_id="sandbox"))
    spec = {"process": {"args": ["true"]}, "root": {"path": f"{MINE}/c/rootfs"}, "linux": {}}
    with pytest.raises(InvalidArgument, match="reserved"):
        await agent.CreateContainer(
            agent_pb2.CreateContainerRequest(
                container_id="sandbox", OCI=from_dict(spec, oci_pb2.Spec())
            )
        )


async def test_copyfile_long_names_and_deep_trees_are_invalid_argument_not_unknown(
    agent: Any,
) -> None:
    with pytest.raises(InvalidArgument):
        await agent.CopyFile(copy_req(f"{MINE}/{'n' * 300}"))
    await agent.CopyFile(copy_req(f"{MINE}/deep/" + "d/" * 1500 + "f"))
    await agent.CopyFile(copy_req(f"{MINE}/deep", b"flat"))
    assert read(f"{MINE}/deep") == b"flat"


async def test_copyfile_at_offset_0_keeps_the_target_until_complete(agent: Any) -> None:
    await agent.CopyFile(copy_req(f"{MINE}/cfg", b"old"))
    await agent.CopyFile(copy_req(f"{MINE}/cfg", b"new-", size=8))
    assert read(f"{MINE}/cfg") == b"old"
