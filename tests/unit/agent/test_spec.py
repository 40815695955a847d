"""Kata-style spec rewrite and the grpc.Spec <-> OCI JSON conversion."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pykata.agent.container.spec import DEFAULT_PATH, cgroups_path, rewrite_spec
from pykata.agent.errors import InvalidArgument
from pykata.agent.rpc.convert.oci import from_dict, json_name, to_dict
from pykata.protocols import oci_pb2

ROOTFS = "/run/kata-containers/c1/rootfs"
SHARED = {
    "ipc": "/run/kata-containers/sandbox/ns/ipc",
    "uts": "/run/kata-containers/sandbox/ns/uts",
}


def host_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "process": {"args": ["sh"], "env": ["A=1"]},
        "root": {"path": "/run/kata-containers/shared/containers/c1/rootfs", "readonly": True},
        "hooks": {"prestart": [{"path": "/usr/bin/host-hook"}]},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {
            "namespaces": [
                {"type": "pid", "path": "/proc/1/ns/pid"},
                {"type": "network", "path": "/var/run/netns/cni-1"},
                {"type": "ipc"},
                {"type": "uts", "path": "/proc/42/ns/uts"},
                {"type": "mount"},
            ],
            "cgroupsPath": "/kubepods/pod1/c1",
        },
    }
    spec.update(overrides)
    return spec


def rewrite(spec: dict[str, Any], *, shared: dict[str, str] = SHARED, **kwargs: Any) -> Any:
    return rewrite_spec(spec, container_id="c1", rootfs=ROOTFS, namespaces=shared, **kwargs).spec


def test_rewrite_namespaces_root_hooks_and_defaults() -> None:
    original = host_spec()
    out = rewrite(original)
    assert out["root"] == {"path": ROOTFS, "readonly": True}
    assert "hooks" not in out
    assert out["linux"]["namespaces"] == [
        {"type": "ipc", "path": SHARED["ipc"]},
        {"type": "uts", "path": SHARED["uts"]},
        {"type": "mount"},
        {"type": "pid"},
    ]
    assert out["linux"]["cgroupsPath"] == "/kata/kubepods/pod1/c1"
    assert out["process"]["env"] == ["A=1", DEFAULT_PATH]
    assert out["process"]["cwd"] == "/"
    assert out["process"]["user"] == {"uid": 0, "gid": 0}
    # The caller's dict is left alone.
    assert original["hooks"] and original["root"]["path"].startswith("/run/kata-containers/shared")


def test_a_shared_pid_namespace_is_joined() -> None:
    out = rewrite(host_spec(), shared={**SHARED, "pid": "/proc/77/ns/pid"})
    assert {"type": "pid", "path": "/proc/77/ns/pid"} in out["linux"]["namespaces"]


def test_without_shared_namespaces_containers_get_new_ones() -> None:
    out = rewrite(host_spec(), shared={})
    assert {"type": "uts"} in out["linux"]["namespaces"]


@pytest.mark.parametrize("spec", [host_spec(process=None), host_spec(linux=None)])
def test_missing_process_or_linux(spec: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        rewrite(spec)


@pytest.mark.parametrize(
    "mount",
    [
        {"destination": "relative", "source": "x"},
        {"destination": "/a/../../etc", "source": "x"},
        {"destination": "/data", "source": "/run/kata-containers/shared/../../../etc"},
        {"destination": "/data", "source": "/run/kata-containers"},
    ],
)
def test_bad_mounts_are_refused(mount: dict[str, str]) -> None:
    with pytest.raises(InvalidArgument):
        rewrite(host_spec(mounts=[mount]))


def test_mount_source_under_kata_tree_is_normalised() -> None:
    src = "/run/kata-containers/shared/containers/./c1-vol"
    out = rewrite(host_spec(mounts=[{"destination": "/v", "source": src, "type": "bind"}]))
    assert out["mounts"][0]["source"] == "/run/kata-containers/shared/containers/c1-vol"


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        ("", "/kata/c1"),
        ("system.slice:kata:c1", "/kata/c1"),
        ("kubepods/x", "/kata/kubepods/x"),
        ("/a//b/", "/kata/a/b"),
    ],
)
def test_cgroups_path(requested: str, expected: str) -> None:
    assert cgroups_path(requested, "c1") == expected


@pytest.mark.parametrize("requested", ["/", "/a/../../b"])
def test_bad_cgroups_path(requested: str) -> None:
    with pytest.raises(InvalidArgument):
        cgroups_path(requested, "c1")


@pytest.mark.parametrize(
    ("field", "name"),
    [
        ("Version", "ociVersion"),
        ("UIDMappings", "uidMappings"),
        ("HostID", "hostID"),
        ("OOMScoreAdj", "oomScoreAdj"),
        ("DisableOOMKiller", "disableOOMKiller"),
        ("BlockIO", "blockIO"),
        ("CPU", "cpu"),
        ("L3CacheSchema", "l3CacheSchema"),
        ("Pagesize", "pageSize"),
        ("errnoret", "errnoRet"),
        ("ThrottleReadIOPSDevice", "throttleReadIOPSDevice"),
        ("destination", "destination"),
    ],
)
def test_json_names(field: str, name: str) -> None:
    assert json_name(field) == name


def test_spec_to_oci_json() -> None:
    spec = oci_pb2.Spec(
        Version="1.0.2",
        Process=oci_pb2.Process(
            Terminal=True,
            Args=["sh"],
            User=oci_pb2.User(UID=1000, AdditionalGids=[5]),
            ConsoleSize=oci_pb2.Box(Height=24, Width=80),
        ),
        Root=oci_pb2.Root(Path="/r"),
        Annotations={"io.kubernetes.cri.container-type": "sandbox"},
        Linux=oci_pb2.Linux(
            Resources=oci_pb2.LinuxResources(
                Memory=oci_pb2.LinuxMemory(Limit=1 << 20, DisableOOMKiller=True),
                HugepageLimits=[oci_pb2.LinuxHugepageLimit(Pagesize="2MB", Limit=4)],
            ),
            UIDMappings=[oci_pb2.LinuxIDMapping(HostID=1, ContainerID=0, Size=10)],
            Seccomp=oci_pb2.LinuxSeccomp(
                Syscalls=[oci_pb2.LinuxSyscall(Names=["kill"], Action="A", errnoret=1)]
            ),
        ),
    )
    assert to_dict(spec) == {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": True,
            "consoleSize": {"height": 24, "width": 80},
            "user": {"uid": 1000, "additionalGids": [5]},
            "args": ["sh"],
        },
        "root": {"path": "/r"},
        "annotations": {"io.kubernetes.cri.container-type": "sandbox"},
        "linux": {
            "uidMappings": [{"hostID": 1, "size": 10}],
            "resources": {
                "memory": {"limit": 1 << 20, "disableOOMKiller": True},
                "hugepageLimits": [{"pageSize": "2MB", "limit": 4}],
            },
            "seccomp": {"syscalls": [{"names": ["kill"], "action": "A", "errnoRet": 1}]},
        },
    }


def test_unknown_json_keys_are_ignored() -> None:
    assert from_dict({"nope": 1, "hostname": "h"}, oci_pb2.Spec()) == oci_pb2.Spec(Hostname="h")


text = st.text(max_size=8)
processes = st.builds(
    oci_pb2.Process,
    Terminal=st.booleans(),
    Args=st.lists(text, max_size=3),
    Env=st.lists(text, max_size=3),
    Cwd=text,
    OOMScoreAdj=st.integers(-1000, 1000),
    Rlimits=st.lists(
        st.builds(oci_pb2.POSIXRlimit, Type=text, Hard=st.integers(0, 2**64 - 1)), max_size=2
    ),
)
specs = st.builds(
    oci_pb2.Spec,
    Version=text,
    Process=processes,
    Hostname=text,
    Mounts=st.lists(
        st.builds(oci_pb2.Mount, destination=text, options=st.lists(text, max_size=2)),
        max_size=3,
    ),
    Annotations=st.dictionaries(text, text, max_size=3),
    Linux=st.builds(
        oci_pb2.Linux,
        CgroupsPath=text,
        Sysctl=st.dictionaries(text, text, max_size=2),
        Namespaces=st.lists(st.builds(oci_pb2.LinuxNamespace, Type=text, Path=text), max_size=3),
    ),
)


@given(specs)
def test_oci_round_trip(spec: oci_pb2.Spec) -> None:
    assert from_dict(to_dict(spec), oci_pb2.Spec()) == spec
