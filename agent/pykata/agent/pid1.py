"""What the agent does as the guest's init (PID 1), or as a subreaper when it is not.

As PID 1: the base filesystems, cgroups, loopback up, session leader, kernel modules from
modules-load.d, and at the end sync + power off. Otherwise (systemd image, host tests): become
a child subreaper so container processes re-parent to us, and simply exit at the end.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import signal
import socket
import struct
import sys
import threading
import time
from typing import NoReturn

from pykata.agent import kmod, log
from pykata.agent.libc import last_error, libc
from pykata.agent.mount import (
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MS_RELATIME,
    MS_REMOUNT,
    fstype_of,
    mount,
)

logger = log.get("init")


PR_SET_CHILD_SUBREAPER = 36
RB_POWER_OFF = 0x4321FEDC
SYNC_TIMEOUT = 5.0
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

# (source, target, fstype, flags, data), in mount order.
BASE_MOUNTS: list[tuple[str, str, str, int, str]] = [
    ("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, ""),
    ("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, ""),
    ("dev", "/dev", "devtmpfs", MS_NOSUID, "mode=0755"),
    ("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"),
    ("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"),
    ("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755"),
]

CGROUP_FLAGS = MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RELATIME
CGROUP_V1_CONTROLLERS = [
    "cpu",
    "cpuacct",
    "blkio",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "perf_event",
    "net_prio",
    "hugetlb",
    "pids",
    "rdma",
]
MODULES_LOAD_DIRS = ["/etc/modules-load.d", "/usr/lib/modules-load.d"]
CGROUP_DIR = "/sys/fs/cgroup"
# As OOMScoreAdjust= in the image flavour's unit (Kata's own unit has the same value).
OOM_SCORE_ADJ = -997


def is_pid1() -> bool:
    return os.getpid() == 1


def _mount_once(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    os.makedirs(target, exist_ok=True)
    if fstype_of(target) == fstype:
        return
    try:
        mount(source, target, fstype, flags, data)
    except OSError as exc:
        logger.error("mount failed", extra={"target": target, "error": str(exc)})


def _own_proc() -> bool:
    """/proc is mounted and shows our pid namespace (as its init we are "1" there)."""
    try:
        return os.readlink("/proc/self") == str(os.getpid())
    except OSError:
        return False


def mount_base() -> None:
    # /proc must come first: fstype_of() reads /proc/self/mountinfo.
    source, target, fstype, flags, data = BASE_MOUNTS[0]
    os.makedirs(target, exist_ok=True)
    if not _own_proc():
        try:
            mount(source, target, fstype, flags, data)
        except OSError as exc:
            logger.error("cannot mount /proc", extra={"error": str(exc)})
            return
    for entry in BASE_MOUNTS[1:]:
        _mount_once(*entry)
    with contextlib.suppress(FileNotFoundError):
        if not os.path.islink("/dev/ptmx"):
            os.unlink("/dev/ptmx")
    with contextlib.suppress(FileExistsError):
        os.symlink("pts/ptmx", "/dev/ptmx")


def ensure_console(console: str = "/dev/console") -> None:
    """Give stdin/stdout/stderr the console when the kernel could not (no /dev/console in the
    initramfs): logs go to stderr."""
    missing = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            missing.append(fd)
    if not missing:
        return
    try:
        tty = os.open(console, os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return
    for fd in missing:
        os.dup2(tty, fd)
    if tty not in (0, 1, 2):
        os.close(tty)
    if sys.stdout is None or 1 in missing:
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    if sys.stderr is None or 2 in missing:
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115


def mount_cgroups(v2: bool, root: str = CGROUP_DIR) -> None:
    """Mount the cgroup filesystems at ``root``, unless something is mounted there already.

    In a guest nothing is: /sys is the agent's own fresh sysfs. A mount found there was made
    by someone else (a test wrapper, a host's tree seen through a private mount namespace:
    its tmpfs superblock is the whole machine's): it is used as it is, never remounted, and
    no folder is made in it."""
    existing = fstype_of(root)
    if existing is not None:
        logger.info(
            "cgroups already mounted: used as they are", extra={"target": root, "fstype": existing}
        )
        return
    if v2:
        if _mount_own("cgroup2", root, "cgroup2", CGROUP_FLAGS, "nsdelegate"):
            enable_controllers(root)
        return
    # As Kata: one hierarchy per controller, then the tmpfs holding them goes read-only.
    tmpfs_flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    if not _mount_own("tmpfs", root, "tmpfs", tmpfs_flags, "mode=755"):
        return
    available = _v1_controllers()
    if "devices" not in available:
        logger.warning("no devices cgroup controller: cgroups left unmounted")
        return
    for name in CGROUP_V1_CONTROLLERS:
        if name in available:
            _mount_once("cgroup", f"{root}/{name}", "cgroup", CGROUP_FLAGS, name)
    # The tmpfs mounted just above: the agent's own, so its remount changes nothing else.
    try:
        mount("tmpfs", root, None, MS_REMOUNT | MS_RDONLY | tmpfs_flags, "mode=755")
    except OSError as exc:
        logger.error("cannot make /sys/fs/cgroup read-only", extra={"error": str(exc)})


def _mount_own(source: str, target: str, fstype: str, flags: int, data: str) -> bool:
    os.makedirs(target, exist_ok=True)
    try:
        mount(source, target, fstype, flags, data)
    except OSError as exc:
        logger.error("mount failed", extra={"target": target, "error": str(exc)})
        return False
    return True


def protect_from_oom(adj: int = OOM_SCORE_ADJ, path: str = "/proc/self/oom_score_adj") -> None:
    """As the image flavour's unit (OOMScoreAdjust=-997): the OOM killer picks containers
    first, the guest being useless without its agent."""
    try:
        with open(path, "w") as f:
            f.write(str(adj))
    except OSError as exc:
        logger.warning("cannot set oom_score_adj", extra={"error": str(exc)})


def _v1_controllers() -> set[str]:
    names = set()
    with contextlib.suppress(OSError), open("/proc/cgroups") as f:
        for line in f:
            fields = line.split()
            if fields and not line.startswith("#") and fields[-1] == "1":
                names.add(fields[0])
    return names


def enable_controllers(root: str) -> None:
    """Delegate every available controller to child cgroups (containers need them)."""
    try:
        with open(os.path.join(root, "cgroup.controllers")) as f:
            controllers = f.read().split()
    except OSError as exc:
        logger.error("cannot read cgroup controllers", extra={"error": str(exc)})
        return
    for name in controllers:
        try:
            with open(os.path.join(root, "cgroup.subtree_control"), "w") as f:
                f.write(f"+{name}")
        except OSError as exc:
            logger.warning(
                "cannot enable cgroup controller", extra={"controller": name, "error": str(exc)}
            )


def loopback_up() -> None:
    """ifconfig lo up with one ioctl: pyroute2 costs too much memory to import at start."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def modules_to_load(dirs: list[str] = MODULES_LOAD_DIRS) -> list[str]:
    """Module names from modules-load.d(5) files: one per line, # and ; start comments."""
    names: list[str] = []
    seen: set[str] = set()
    files: dict[str, str] = {}
    for directory in dirs:
        for path in sorted(glob.glob(os.path.join(directory, "*.conf"))):
            # Same file name in /etc overrides /usr/lib, as systemd-modules-load does.
            files.setdefault(os.path.basename(path), path)
    for base in sorted(files):
        try:
            with open(files[base]) as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            name = line.strip()
            if name and name[0] not in "#;" and name not in seen:
                seen.add(name)
                names.append(name)
    return names


def start_modules(names: list[str]) -> threading.Thread | None:
    """Load them in a thread: finit_module waits in the kernel without the GIL while the
    agent imports the rest of itself, which is what takes long at boot."""
    if not names:
        return None

    def load() -> None:
        for error in kmod.load_all(names):
            logger.error("kernel module not loaded", extra={"error": error})

    thread = threading.Thread(target=load, name="kmod", daemon=True)
    thread.start()
    return thread


def wait_modules(loading: threading.Thread | None) -> None:
    """Wait for start_modules(): storages need their drivers (vsock the agent retries)."""
    if loading is not None:
        loading.join()


def set_child_subreaper() -> None:
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        error = last_error("prctl").strerror
        logger.error("PR_SET_CHILD_SUBREAPER failed", extra={"error": error})


def _ignore_sigint(signum: int, frame: object) -> None:
    logger.warning("SIGINT ignored: the agent is init")


def init(cgroup_v2: bool) -> threading.Thread | None:
    """PID 1 set-up; each step logs its own failure and the next one still runs. Returns the
    module loading still in progress (see wait_modules)."""
    # The kernel keeps default-action signals away from init, but Python handles SIGINT
    # itself (KeyboardInterrupt). A handler, unlike SIG_IGN, is not inherited over exec.
    signal.signal(signal.SIGINT, _ignore_sigint)
    mount_base()
    mount_cgroups(cgroup_v2)
    protect_from_oom()
    with contextlib.suppress(PermissionError):
        os.setsid()
    try:
        loopback_up()
    except OSError as exc:
        logger.error("cannot bring lo up", extra={"error": str(exc)})
    return start_modules(modules_to_load())


def power_off() -> NoReturn:
    """sync and power the VM off; never returns: PID 1 exiting would panic the kernel (if
    the kernel refuses, it sleeps).

    sync waits for every file system, a virtio-fs share whose daemon died included, which
    never answers: it gets SYNC_TIMEOUT, then the VM goes off regardless."""
    logger.info("powering off")
    syncer = threading.Thread(target=os.sync, name="sync", daemon=True)
    syncer.start()
    syncer.join(SYNC_TIMEOUT)
    if syncer.is_alive():
        logger.warning("sync did not finish; powering off anyway", extra={"waited_s": SYNC_TIMEOUT})
    if libc.reboot(RB_POWER_OFF) != 0:
        logger.critical(
            "reboot(RB_POWER_OFF) failed", extra={"error": last_error("reboot").strerror}
        )
    while True:
        time.sleep(3600)
