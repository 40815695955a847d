"""The OCI spec (`grpc.Spec`) for `run`/`exec`, shaped like the one Kata's runtime sends.

Kata's runtime forwards the spec containerd generated, minus what the guest must not see
(hooks, network/cgroup/time namespaces, namespace paths, device cgroup rules): that is the
shape built here, with containerd's default capabilities, mounts and masked paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pykata.protocols import oci_pb2

OCI_VERSION = "1.1.0"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# containerd's default capability set for a non-privileged container.
CAPABILITIES = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]
# The guest keeps the network namespace of the VM (Kata drops "network" from the spec).
NAMESPACES = ["pid", "ipc", "uts", "mount"]
MOUNTS = [
    ("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"]),
    ("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
    (
        "/dev/pts",
        "devpts",
        "devpts",
        ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
    ),
    ("/dev/shm", "tmpfs", "shm", ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
    ("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
    ("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", "ro"]),
    ("/sys/fs/cgroup", "cgroup", "cgroup", ["nosuid", "noexec", "nodev", "relatime", "ro"]),
]
MASKED_PATHS = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
]
READONLY_PATHS = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
]


@dataclass(frozen=True)
class ProcessOptions:
    args: Sequence[str]
    env: Sequence[str] = ()
    cwd: str = "/"
    terminal: bool = False
    rows: int = 0
    columns: int = 0


def build_process(options: ProcessOptions) -> oci_pb2.Process:
    env = list(options.env)
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, DEFAULT_PATH)
    if options.terminal and not any(e.startswith("TERM=") for e in env):
        env.append("TERM=xterm")
    process = oci_pb2.Process(
        Terminal=options.terminal,
        User=oci_pb2.User(UID=0, GID=0),
        Args=list(options.args),
        Env=env,
        Cwd=options.cwd,
        Capabilities=oci_pb2.LinuxCapabilities(
            Bounding=CAPABILITIES, Effective=CAPABILITIES, Permitted=CAPABILITIES
        ),
        Rlimits=[oci_pb2.POSIXRlimit(Type="RLIMIT_NOFILE", Hard=1024, Soft=1024)],
        NoNewPrivileges=True,
    )
    if options.terminal and options.rows and options.columns:
        process.ConsoleSize.CopyFrom(oci_pb2.Box(Height=options.rows, Width=options.columns))
    return process


def build_spec(options: ProcessOptions, root_path: str, hostname: str) -> oci_pb2.Spec:
    return oci_pb2.Spec(
        Version=OCI_VERSION,
        Process=build_process(options),
        Root=oci_pb2.Root(Path=root_path, Readonly=False),
        Hostname=hostname,
        Mounts=[
            oci_pb2.Mount(destination=dest, type=fstype, source=source, options=opts)
            for dest, fstype, source, opts in MOUNTS
        ],
        Linux=oci_pb2.Linux(
            Namespaces=[oci_pb2.LinuxNamespace(Type=ns) for ns in NAMESPACES],
            MaskedPaths=MASKED_PATHS,
            ReadonlyPaths=READONLY_PATHS,
        ),
    )
