"""The OCI spec kata-agent-ctl sends for `run` and `exec`."""

from __future__ import annotations

from pykata.host.ctl.spec import DEFAULT_PATH, ProcessOptions, build_process, build_spec


def test_spec_has_kata_shape() -> None:
    spec = build_spec(
        ProcessOptions(args=["sh", "-c", "echo hi"], env=["A=1"], cwd="/tmp"),
        root_path="/run/kata-containers/shared/containers/c1/rootfs",
        hostname="h1",
    )
    assert spec.Version.startswith("1.")
    assert spec.Root.Path == "/run/kata-containers/shared/containers/c1/rootfs"
    assert not spec.Root.Readonly
    assert spec.Hostname == "h1"
    assert list(spec.Process.Args) == ["sh", "-c", "echo hi"]
    assert list(spec.Process.Env) == [DEFAULT_PATH, "A=1"]
    assert spec.Process.Cwd == "/tmp"
    assert not spec.Process.Terminal
    assert not spec.Process.HasField("ConsoleSize")
    assert spec.Process.User.UID == 0 and spec.Process.User.GID == 0
    assert "CAP_KILL" in spec.Process.Capabilities.Bounding
    assert "CAP_SYS_ADMIN" not in spec.Process.Capabilities.Effective
    # Kata removes network (and cgroup, time) namespaces; no namespace carries a host path.
    assert [ns.Type for ns in spec.Linux.Namespaces] == ["pid", "ipc", "uts", "mount"]
    assert all(not ns.Path for ns in spec.Linux.Namespaces)
    mounts = {m.destination: m for m in spec.Mounts}
    assert {"/proc", "/dev", "/dev/pts", "/dev/shm", "/sys"} <= set(mounts)
    assert mounts["/proc"].type == "proc"
    assert "ro" in mounts["/sys"].options
    assert "/proc/kcore" in spec.Linux.MaskedPaths
    assert not spec.HasField("Hooks")


def test_terminal_process_gets_term_and_console_size() -> None:
    process = build_process(ProcessOptions(args=["sh"], terminal=True, rows=40, columns=120))
    assert process.Terminal
    assert "TERM=xterm" in process.Env
    assert (process.ConsoleSize.Height, process.ConsoleSize.Width) == (40, 120)


def test_user_env_wins_over_defaults() -> None:
    process = build_process(
        ProcessOptions(args=["sh"], env=["PATH=/bin", "TERM=dumb"], terminal=True)
    )
    assert list(process.Env) == ["PATH=/bin", "TERM=dumb"]
    assert not process.HasField("ConsoleSize")  # size unknown: the agent keeps its default
