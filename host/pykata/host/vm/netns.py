"""Network namespaces for a VM's NIC: a holder process, ``ip`` inside, the tap end's address.

A VM's virtio-net NIC sits on a TAP device that QEMU creates in the network namespace it is
started in (``nsenter --net=/proc/PID/ns/net``), never the host's own: a process holding a
namespace of its own (``unshare --net``) names it by its pid. Nothing here touches the
host's network namespace.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# The holder waits for a signal; its last argument tags it (a VM's workdir, so that
# state.process_alive recognises it as one of that VM's processes).
HOLDER_SCRIPT = "import signal; signal.pause()"


def netns_path(pid: int) -> Path:
    return Path(f"/proc/{pid}/ns/net")


def _inode(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def is_own_namespace(pid: int) -> bool:
    """Is ``pid``'s network namespace another one than this process's?"""
    return _inode(netns_path(pid)) != _inode(Path("/proc/self/ns/net"))


def wait_own_namespace(pid: int, within: float = 5.0) -> None:
    """Wait for ``pid`` (just spawned through ``unshare --net``) to be in a network namespace
    of its own; ValueError if it is still in ours (or gone) after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            if is_own_namespace(pid):
                return
        except OSError as exc:
            raise ValueError(f"no process {pid} to hold a network namespace: {exc}") from None
        if time.monotonic() > deadline:
            raise ValueError(f"process {pid} is in this host's network namespace, not its own")
        time.sleep(0.02)


def holder_command(tag: str) -> list[str]:
    return ["unshare", "--net", "--", sys.executable, "-c", HOLDER_SCRIPT, tag]


def start_holder(tag: str, *, detach: bool = False) -> subprocess.Popen[bytes]:
    """A process in a fresh network namespace (loopback only, down) until it is killed;
    ``detach`` lets it outlive this process (its own session)."""
    proc = subprocess.Popen(
        holder_command(tag),
        stdin=subprocess.DEVNULL,
        # No pipe of the caller's may stay open in it (a `subprocess.run` of `vm up` waits
        # for EOF on them).
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=detach,
    )
    try:
        wait_own_namespace(proc.pid)
    except ValueError:
        proc.kill()
        proc.wait()
        raise
    return proc


def link_names(pid: int) -> list[str]:
    """Interfaces of ``pid``'s network namespace (``/proc/PID/net`` shows that namespace)."""
    lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]
    return [line.split(":", 1)[0].strip() for line in lines if ":" in line]


def ip(pid: int, *args: str) -> Any:
    """``ip -json ARGS`` inside ``pid``'s network namespace; the parsed output (None when
    the command prints nothing). CalledProcessError when ``ip`` fails."""
    if not is_own_namespace(pid):
        raise ValueError(f"process {pid} is in this host's network namespace")
    done = subprocess.run(
        ["nsenter", f"--net={netns_path(pid)}", "--", "ip", "-json", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout) if done.stdout.strip() else None


def configure_link(pid: int, name: str, address: str) -> None:
    """Give link ``name`` in ``pid``'s namespace ``address`` (CIDR) and bring it up."""
    ip(pid, "addr", "add", address, "dev", name)
    ip(pid, "link", "set", name, "up")


def host_end(guest: str) -> tuple[str, str]:
    """For the guest's address ``10.99.0.2/24``: the tap end's address (the network's first
    host, ``10.99.0.1/24``) and the guest's gateway (``10.99.0.1``). ValueError for a bad
    CIDR, a network with no room for both, or a guest address that is the first host."""
    iface = ipaddress.ip_interface(guest)
    if iface.version != 4:
        raise ValueError(f"{guest}: only IPv4 is supported")
    if "/" not in guest:
        raise ValueError(f"{guest}: give the prefix length, e.g. {guest}/24")
    network = iface.network
    if network.prefixlen > 30:
        raise ValueError(f"{guest}: the network has no room for the guest and the host end")
    first = next(network.hosts())
    if iface.ip == first:
        raise ValueError(f"{guest}: {first} is the host end's address; pick another")
    if iface.ip == network.broadcast_address or iface.ip == network.network_address:
        raise ValueError(f"{guest}: not a host address of {network}")
    return f"{first}/{network.prefixlen}", str(first)


def random_mac() -> str:
    """A locally administered unicast MAC (``02:…``)."""
    return "02:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))
