"""Sandbox-wide namespaces that every container of the pod joins.

IPC and UTS namespaces are made persistent the Kata way: a throw-away thread unshares them
(namespaces belong to the thread) and its ``/proc/<pid>/task/<tid>/ns/<kind>`` file is
bind-mounted onto a file under ``/run/kata-containers/sandbox/ns/<agent pid>/``, which keeps
the namespace alive after the thread ends. (Kata uses one fixed directory; the pid level lets
several agents share a development host without taking each other's namespaces.)

There is no sandbox PID namespace of our own: as in the Rust agent, the first container (the
pause container) gets a new one, which containers created with ``sandbox_pidns`` join.
"""

from __future__ import annotations

import contextlib
import os
import threading

from pykata.agent import log
from pykata.agent.errors import FailedPrecondition
from pykata.agent.libc import last_error, libc
from pykata.agent.mount import MS_BIND, fstype_of, mount, umount_all

logger = log.get("namespace")

NS_ROOT = "/run/kata-containers/sandbox/ns"
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
FLAGS = {"ipc": CLONE_NEWIPC, "uts": CLONE_NEWUTS}


def ns_dir() -> str:
    return f"{NS_ROOT}/{os.getpid()}"


def _persist_in_thread(kind: str, target: str, hostname: str, result: list[BaseException]) -> None:
    try:
        if libc.unshare(FLAGS[kind]) != 0:
            raise last_error(f"unshare({kind})")
        if kind == "uts" and hostname:
            # Only this thread's new UTS namespace is touched, never the VM's (or host's).
            name = hostname.encode()
            if libc.sethostname(name, len(name)) != 0:
                raise last_error("sethostname")
        source = f"/proc/{os.getpid()}/task/{threading.get_native_id()}/ns/{kind}"
        mount(source, target, None, MS_BIND)
    except BaseException as exc:
        result.append(exc)


def persist(kind: str, hostname: str = "") -> str:
    """A new ``kind`` namespace pinned at ns_dir()/<kind>; returns that path."""
    os.makedirs(ns_dir(), exist_ok=True)
    target = os.path.join(ns_dir(), kind)
    if fstype_of(target) == "nsfs":
        # Never take over a namespace pinned by someone else.
        raise FailedPrecondition(f"{target} already holds a namespace")
    with open(target, "w"):
        pass
    errors: list[BaseException] = []
    # A dedicated thread: its namespaces die with it unless pinned; the loop's stay intact.
    thread = threading.Thread(target=_persist_in_thread, args=(kind, target, hostname, errors))
    thread.start()
    thread.join()
    if errors:
        with contextlib.suppress(OSError):
            os.unlink(target)
        raise errors[0]
    return target


def release(path: str) -> None:
    umount_all(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
