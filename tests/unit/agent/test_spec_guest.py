"""What the guest adds to or takes from a container's spec: net.* sysctls, LSM labels,
guest hooks; and the request fields the agent refuses instead of ignoring."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pykata.agent.container.guestenv import apply_net_sysctls, guest_lsms, load_guest_hooks
from pykata.agent.container.spec import rewrite_spec, sysctl_path
from pykata.agent.errors import InvalidArgument, Unimplemented
from pykata.agent.process.user import StringUser
from pykata.agent.rpc.convert.requests import refuse_unhonoured, string_user
from pykata.protocols import agent_pb2

CRI_SYSCTLS = {"net.ipv4.ip_unprivileged_port_start": "0", "net.ipv4.ping_group_range": "0 1"}


def pause_spec(**linux: Any) -> dict[str, Any]:
    return {
        "process": {
            "args": ["/pause"],
            "apparmorProfile": "cri-containerd.apparmor.d",
            "selinuxLabel": "system_u:system_r:container_t:s0",
        },
        "root": {"path": "/run/kata-containers/shared/containers/p/rootfs"},
        "linux": {"namespaces": [{"type": "network"}, {"type": "pid"}], **linux},
    }


def rewrite(spec: dict[str, Any], **kwargs: Any) -> Any:
    return rewrite_spec(
        spec, container_id="p", rootfs="/run/kata-containers/p/rootfs", namespaces={}, **kwargs
    )


def test_net_sysctls_leave_the_spec_for_the_agent() -> None:
    guest = rewrite(pause_spec(sysctl={**CRI_SYSCTLS, "kernel.shm_rmid_forced": "1"}))
    assert guest.net_sysctls == CRI_SYSCTLS
    assert guest.spec["linux"]["sysctl"] == {"kernel.shm_rmid_forced": "1"}


def test_only_net_sysctls_leave_no_sysctl_section() -> None:
    guest = rewrite(pause_spec(sysctl=dict(CRI_SYSCTLS)))
    assert "sysctl" not in guest.spec["linux"]
    assert rewrite(pause_spec()).net_sysctls == {}


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("net.ipv4.ping_group_range", "/proc/sys/net/ipv4/ping_group_range"),
        ("net/ipv4/conf/eth0.100/forwarding", "/proc/sys/net/ipv4/conf/eth0.100/forwarding"),
        ("kernel.shm_rmid_forced", "/proc/sys/kernel/shm_rmid_forced"),
    ],
)
def test_sysctl_paths(name: str, path: str) -> None:
    assert sysctl_path(name) == path


@pytest.mark.parametrize(
    "name",
    ["net/../../etc", "net..ipv4", "net.ipv4.", "/net/ipv4", "NET.ipv4", "net.ipv4 x", "", "n\0"],
)
def test_bad_sysctl_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid sysctl name"):
        rewrite(pause_spec(sysctl={name: "1"}))


def test_a_nul_in_a_sysctl_value_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="invalid value"):
        rewrite(pause_spec(sysctl={"net.ipv4.ping_group_range": "0\0"}))


def test_a_sysctl_missing_from_the_kernel_is_skipped() -> None:
    apply_net_sysctls({"net.pykata_no_such_sysctl": "1"}, "p")


def test_lsm_labels_are_dropped_without_the_lsm() -> None:
    spec = pause_spec(mountLabel="system_u:object_r:container_file_t:s0")
    out = rewrite(spec).spec
    assert "apparmorProfile" not in out["process"] and "selinuxLabel" not in out["process"]
    assert "mountLabel" not in out["linux"]
    assert spec["process"]["apparmorProfile"]  # the caller's dict is left alone


def test_lsm_labels_stay_with_the_lsm() -> None:
    spec = pause_spec(mountLabel="l")
    out = rewrite(spec, lsms=frozenset({"apparmor", "selinux", "capability"})).spec
    assert out["process"]["apparmorProfile"] == "cri-containerd.apparmor.d"
    assert out["process"]["selinuxLabel"] and out["linux"]["mountLabel"] == "l"
    only_apparmor = rewrite(spec, lsms=frozenset({"apparmor"})).spec
    assert "apparmorProfile" in only_apparmor["process"]
    assert "selinuxLabel" not in only_apparmor["process"]


def test_guest_lsms_from_the_lsm_list(tmp_path: Path) -> None:
    (tmp_path / "lsm").write_text("lockdown,capability,landlock,yama,apparmor\n")
    assert guest_lsms(str(tmp_path / "lsm"), {}) == {
        "lockdown",
        "capability",
        "landlock",
        "yama",
        "apparmor",
    }


def test_guest_lsms_from_markers_without_securityfs(tmp_path: Path) -> None:
    (tmp_path / "aa").write_text("Y\n")
    (tmp_path / "off").write_text("N\n")
    markers = {"apparmor": str(tmp_path / "aa"), "selinux": str(tmp_path / "none")}
    assert guest_lsms(str(tmp_path / "lsm"), markers) == {"apparmor"}
    assert guest_lsms(str(tmp_path / "lsm"), {"apparmor": str(tmp_path / "off")}) == set()


def test_guest_hooks_replace_the_host_hooks(tmp_path: Path) -> None:
    hooks = {"poststop": [{"path": "/usr/share/oci/hooks/poststop/x", "args": ["x", "poststop"]}]}
    spec = {**pause_spec(), "hooks": {"prestart": [{"path": "/host/hook"}]}}
    assert rewrite(spec, guest_hooks=hooks).spec["hooks"] == hooks
    assert "hooks" not in rewrite(spec).spec


def _executable(path: Path, mode: int = 0o755) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(mode)


def test_load_guest_hooks(tmp_path: Path) -> None:
    _executable(tmp_path / "prestart" / "b-hook")
    _executable(tmp_path / "prestart" / "a-hook")
    _executable(tmp_path / "prestart" / "not-executable", 0o644)
    (tmp_path / "prestart" / "a-dir").mkdir()
    os.symlink("/bin/true", tmp_path / "prestart" / "link")
    _executable(tmp_path / "poststop" / "stop")
    hooks = load_guest_hooks(str(tmp_path))
    assert hooks == {
        "prestart": [
            {"path": str(tmp_path / "prestart" / "a-hook"), "args": ["a-hook", "prestart"]},
            {"path": str(tmp_path / "prestart" / "b-hook"), "args": ["b-hook", "prestart"]},
        ],
        "poststop": [{"path": str(tmp_path / "poststop" / "stop"), "args": ["stop", "poststop"]}],
    }


def test_no_guest_hooks(tmp_path: Path) -> None:
    assert load_guest_hooks("") == {}
    assert load_guest_hooks(str(tmp_path / "missing")) == {}
    with pytest.raises(InvalidArgument, match="must be absolute"):
        load_guest_hooks("relative/hooks")


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (agent_pb2.CreateContainerRequest(stdin_port=5), "CreateContainerRequest.stdin_port"),
        (agent_pb2.CreateContainerRequest(stdout_port=5), "CreateContainerRequest.stdout_port"),
        (agent_pb2.ExecProcessRequest(stderr_port=7), "ExecProcessRequest.stderr_port"),
    ],
)
def test_unhonoured_fields_are_refused(request_: Any, field: str) -> None:
    with pytest.raises(Unimplemented, match=field):
        refuse_unhonoured(request_)


def test_default_fields_pass() -> None:
    refuse_unhonoured(agent_pb2.CreateContainerRequest(container_id="c", sandbox_pidns=True))
    refuse_unhonoured(agent_pb2.ExecProcessRequest(container_id="c"))


def test_string_user_conversion() -> None:
    assert string_user(agent_pb2.StringUser()) is None
    message = agent_pb2.StringUser(uid="nobody", gid="users", additionalGids=["audio"])
    assert string_user(message) == StringUser("nobody", "users", ("audio",))
