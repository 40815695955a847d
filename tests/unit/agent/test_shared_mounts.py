"""Shared mounts: request checks, container names, mount points as a process sees them."""

from __future__ import annotations

import os

import pytest

from pykata.agent.container.shared_mounts import (
    MAX_SHARED_MOUNTS,
    SharedMount,
    container_name,
    is_mount_point,
    validate,
)
from pykata.agent.errors import InvalidArgument
from pykata.agent.rpc.convert.requests import shared_mounts
from pykata.protocols import agent_pb2


def mount(**fields: str) -> SharedMount:
    values = {"name": "m", "src_ctr": "a", "src_path": "/data", "dst_ctr": "b", "dst_path": "/in"}
    return SharedMount(**{**values, **fields})


def test_request_converts_every_field() -> None:
    message = agent_pb2.SharedMount(
        name="m", src_ctr="a", src_path="/data", dst_ctr="b", dst_path="/in"
    )
    assert shared_mounts([message]) == [mount()]


def test_valid_mounts_pass() -> None:
    assert validate([mount(), mount(name="n", dst_path="/deep/er")]) == [
        mount(),
        mount(name="n", dst_path="/deep/er"),
    ]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"src_path": "relative"}, r"shared_mounts\[0\].src_path: .* must be absolute"),
        ({"dst_path": "/"}, r"shared_mounts\[0\].dst_path: the container's root itself"),
        ({"src_path": "/a/../.."}, r"shared_mounts\[0\].src_path: the container's root itself"),
        ({"src_path": "/a\0b"}, r"src_path: path contains a NUL"),
        ({"src_ctr": ""}, r"src_ctr: empty"),
        ({"src_ctr": "a/b"}, r"src_ctr: not a container or mount name"),
        ({"name": "x" * 300}, r"name: not a container or mount name"),
    ],
)
def test_bad_fields_are_refused(fields: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate([mount(**fields)])


def test_too_many_are_refused() -> None:
    with pytest.raises(InvalidArgument, match=f"at most {MAX_SHARED_MOUNTS}"):
        validate([mount()] * (MAX_SHARED_MOUNTS + 1))


def test_container_name_from_cri_annotations() -> None:
    assert container_name({"annotations": {"io.kubernetes.cri.container-name": "app"}}) == "app"
    assert container_name({"annotations": {"io.kubernetes.container.name": "crio"}}) == "crio"
    assert container_name({"annotations": {}}) == ""
    assert container_name({}) == ""


def test_mount_points_as_the_process_sees_them() -> None:
    assert is_mount_point(os.getpid(), "/proc")
    assert is_mount_point(os.getpid(), "/proc/")
    assert not is_mount_point(os.getpid(), "/proc/self")
    assert not is_mount_point(2**22 + 1, "/proc")  # no such process
