"""Boot a kernel + initrd in QEMU with virtio-fs and vsock, and tear it all down again.

    async with VM(kernel, initrd, shared_dir=folder) as vm:
        await vm.wait_console("announce")
        client = await Client.connect(vm.agent_address)

Processes: virtiofsd (when a shared folder is given), our vhost-user-vsock back-end (when
the host has no /dev/vhost-vsock), QEMU. The shared folder becomes a mount point with shared
propagation before virtiofsd starts (sharedfs), so container roots mounted below it later
reach the guest. Every process, socket and that mount goes away on ``stop()``, which the
context manager also runs on errors, test failures and Ctrl-C (cancellation); for a detached
VM, ``stop_detached()`` does it. Non-detached children also die with their parent
(PR_SET_PDEATHSIG); the mount of a killed parent stays until the next start or stop.

With ``nic=Nic(mac, netns_pid)`` the guest gets a virtio-net NIC on a TAP device: QEMU runs in
the network namespace of process ``netns_pid`` (``nsenter --net``; its sockets are paths,
reachable from any namespace) and creates the tap there, never in the host's namespace.
``start()`` returns once the tap exists (configured when ``host_address`` is given); it goes
away with QEMU, the namespace with its holder (the caller's).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from pykata.host.vm import netns, qemu, virtiofsd
from pykata.host.vm.kvm import kvm_works
from pykata.host.vm.process import die_with_parent, terminate, wait_exit
from pykata.host.vm.sharedfs import make_shared_mount, remove_shared_mount
from pykata.host.vm.state import AGENT_PORT, process_alive

log = logging.getLogger(__name__)

VHOST_VSOCK_DEVICE = Path("/dev/vhost-vsock")
CONSOLE_PIPE = "console.pipe"  # QEMU's pipe chardev reads <it>.in and writes <it>.out
CONSOLE_FIFOS = [f"{CONSOLE_PIPE}.in", f"{CONSOLE_PIPE}.out"]
UNIX_LISTENING = 0x10000  # __SO_ACCEPTCON in /proc/net/unix
# Seconds each process gets to exit by itself before SIGTERM, in stop order: QEMU after
# QMP quit, virtiofsd once QEMU hung up; the vsock back-end serves until told to stop.
# A network namespace holder (``vm up --net``: role "netns") goes last, after QEMU.
EXIT_GRACE = {"qemu": 5.0, "vsock": 0.0, "virtiofsd": 2.0, "netns": 0.0}


class VMError(Exception):
    """The VM or one of its helper processes failed to start or died."""


@dataclass(frozen=True)
class Nic:
    """A virtio-net NIC whose TAP device ``tap`` QEMU creates in the network namespace of
    process ``netns_pid`` (which must not be the host's). ``host_address`` (CIDR, e.g.
    ``10.99.0.1/24``): give it to the tap and bring the tap up once QEMU created it."""

    mac: str
    netns_pid: int
    tap: str = "tap0"
    host_address: str | None = None


def remove_sockets(workdir: Path) -> None:
    """Remove every socket and FIFO a VM creates in its workdir (the ``_<port>`` sockets are
    users')."""
    names = ["qmp.sock", "vhost-vsock.sock", "vsock.sock", "virtiofsd.sock", *CONSOLE_FIFOS]
    for path in [workdir / n for n in names]:
        path.unlink(missing_ok=True)


def _listening(path: Path) -> bool:
    target = str(path)
    with open("/proc/net/unix") as table:
        for line in table:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == target and int(fields[3], 16) & UNIX_LISTENING:
                return True
    return False


class VM:
    def __init__(
        self,
        kernel: Path,
        initrd: Path,
        *,
        shared_dir: Path | None = None,
        workdir: Path | None = None,
        name: str = "pykata",
        memory_mib: int = 1024,
        cpus: int = 1,
        append: str = "",
        accel: str | None = None,
        guest_cid: int = 3,
        detach: bool = False,
        start_timeout: float = 30.0,
        vsock_connect_timeout: float | None = None,
        hotplug_ports: int = 0,
        scsi: bool = False,
        nic: Nic | None = None,
        nvdimm: Path | None = None,
        console_pipe: bool = False,
    ) -> None:
        """``accel`` None probes KVM and falls back to TCG; ``detach`` lets the processes
        outlive this one (``kata-agent-ctl vm up``); ``vsock_connect_timeout`` is our vsock
        back-end's ``--connect-timeout`` (None: its default); ``hotplug_ports`` empty PCIe
        root ports (``hp0`` at slot 0x10, ...) and ``scsi`` a virtio-scsi controller
        (``scsi0``) give :meth:`qmp` somewhere to hot-plug disks; ``nic`` a virtio-net NIC
        on a TAP in another network namespace (see :class:`Nic`); ``nvdimm`` a file (its size
        a multiple of 2 MiB) the guest sees as persistent memory, ``/dev/pmem0``;
        ``console_pipe`` the console also in the FIFO :attr:`console_stream`, which the caller
        must read from ``start()`` on (the guest's console stalls once 64 KiB are unread)."""
        self.kernel = Path(kernel)
        self.initrd = Path(initrd)
        self.shared_dir = Path(shared_dir) if shared_dir is not None else None
        self._own_workdir = workdir is None
        # Short paths: unix socket names are limited to 107 bytes.
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="pykata-vm-"))
        self.name = name
        self.memory_mib = memory_mib
        self.cpus = cpus
        self.append = append
        self.accel = accel
        self.guest_cid = guest_cid
        self.detach = detach
        self.start_timeout = start_timeout
        self.vsock_connect_timeout = vsock_connect_timeout
        self.hotplug_ports = hotplug_ports
        self.scsi = scsi
        self.nic = nic
        self.nvdimm = Path(nvdimm) if nvdimm is not None else None
        self.console_pipe = console_pipe
        # time.monotonic() just before QEMU was spawned: the zero of a boot's timeline.
        self.qemu_started: float | None = None
        self.kernel_vsock = VHOST_VSOCK_DEVICE.exists()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[BinaryIO] = []

    # paths and addresses

    @property
    def console_log(self) -> Path:
        return self.workdir / "console.log"

    @property
    def console_stream(self) -> Path:
        """The FIFO QEMU writes the console to when ``console_pipe`` was asked for."""
        return self.workdir / CONSOLE_FIFOS[1]

    @property
    def hybrid_socket(self) -> Path:
        """The hybrid vsock socket (``CONNECT <port>``); guest dials land on ``<it>_<port>``."""
        return self.workdir / "vsock.sock"

    def vsock_address(self, port: int) -> str:
        if self.kernel_vsock:
            return f"vsock://{self.guest_cid}:{port}"
        return f"hvsock://{self.hybrid_socket}:{port}"

    @property
    def agent_address(self) -> str:
        return self.vsock_address(AGENT_PORT)

    @property
    def pids(self) -> dict[str, int]:
        return {role: proc.pid for role, proc in self.procs.items()}

    # lifecycle

    async def __aenter__(self) -> VM:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        remove_sockets(self.workdir)
        self.console_log.unlink(missing_ok=True)
        try:
            nvdimm_size = self._nvdimm_size()
            nic_namespace = self._nic_namespace() if self.nic is not None else None
            if self.accel is None:
                self.accel = "kvm" if await asyncio.to_thread(kvm_works, self.kernel) else "tcg"
            virtiofs_socket = await self._start_virtiofsd() if self.shared_dir else None
            vsock: qemu.VhostUserVsock | qemu.KernelVsock
            if self.kernel_vsock:
                vsock = qemu.KernelVsock(self.guest_cid)
            else:
                vsock = qemu.VhostUserVsock(await self._start_vsock_backend())
            if self.console_pipe:
                for fifo in CONSOLE_FIFOS:
                    os.mkfifo(self.workdir / fifo)
            spec = qemu.MachineSpec(
                kernel=self.kernel,
                initrd=self.initrd,
                append=self.append,
                accel=self.accel,
                memory_mib=self.memory_mib,
                cpus=self.cpus,
                console_log=self.console_log,
                qmp_socket=self.workdir / "qmp.sock",
                vsock=vsock,
                virtiofs_socket=virtiofs_socket,
                name=self.name,
                hotplug_ports=self.hotplug_ports,
                scsi=self.scsi,
                nic=qemu.TapNic(self.nic.tap, self.nic.mac) if self.nic else None,
                nvdimm=self.nvdimm.resolve() if self.nvdimm else None,
                nvdimm_size=nvdimm_size,
                console_pipe=self.workdir / CONSOLE_PIPE if self.console_pipe else None,
            )
            cmd = qemu.command(spec)
            if nic_namespace is not None:
                cmd = ["nsenter", f"--net={nic_namespace}", "--", *cmd]
            self.qemu_started = time.monotonic()
            proc = self._spawn("qemu", cmd)
            log.info("VM %s: QEMU started (%s)", self.name, self.accel)
            if self.nic is not None:
                await self._set_up_tap(proc)
        except BaseException:
            await self.stop()
            raise

    def _nvdimm_size(self) -> int:
        if self.nvdimm is None:
            return 0
        size = self.nvdimm.stat().st_size
        if size == 0 or size % qemu.NVDIMM_ALIGN:
            raise VMError(f"nvdimm {self.nvdimm}: size {size} is not a multiple of 2 MiB")
        return size

    def _nic_namespace(self) -> Path:
        """The NIC's network namespace, after making sure it is not this host's."""
        assert self.nic is not None
        try:
            netns.wait_own_namespace(self.nic.netns_pid)
        except ValueError as exc:
            raise VMError(f"NIC: {exc}") from None
        return netns.netns_path(self.nic.netns_pid)

    async def _set_up_tap(self, proc: subprocess.Popen[bytes]) -> None:
        """Wait for QEMU to create the tap in the NIC's namespace; configure its address."""
        assert self.nic is not None
        deadline = time.monotonic() + self.start_timeout
        while self.nic.tap not in netns.link_names(self.nic.netns_pid):
            self._check_alive("qemu", proc)
            if time.monotonic() > deadline:
                raise VMError(f"QEMU made no {self.nic.tap} in {self.start_timeout}s")
            await asyncio.sleep(0.02)
        if self.nic.host_address is not None:
            try:
                netns.configure_link(self.nic.netns_pid, self.nic.tap, self.nic.host_address)
            except subprocess.CalledProcessError as exc:
                raise VMError(f"configuring {self.nic.tap}: {exc.stderr.strip()}") from None

    async def qmp(self, execute: str, **arguments: Any) -> Any:
        """One QMP command to the running QEMU (``device_add``, ``blockdev-add``...); its
        ``return`` value. VMError when QEMU refuses it."""
        reply = await qemu.qmp(self.workdir / "qmp.sock", execute, arguments or None)
        if "error" in reply:
            raise VMError(f"QMP {execute}: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")

    def _spawn(
        self, role: str, cmd: list[str], stdout: int | None = None
    ) -> subprocess.Popen[bytes]:
        logfile = open(self.workdir / f"{role}.log", "wb")  # noqa: SIM115 (lives with the child)
        self._logs.append(logfile)
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else logfile,
            stderr=logfile,
            start_new_session=self.detach,
            preexec_fn=None if self.detach else die_with_parent,
        )
        self.procs[role] = proc
        return proc

    async def _start_virtiofsd(self) -> Path:
        assert self.shared_dir is not None
        make_shared_mount(self.shared_dir)
        socket = self.workdir / "virtiofsd.sock"
        proc = self._spawn("virtiofsd", virtiofsd.command(socket, self.shared_dir))
        deadline = time.monotonic() + self.start_timeout
        while not _listening(socket):
            self._check_alive("virtiofsd", proc)
            if time.monotonic() > deadline:
                raise VMError(f"virtiofsd did not listen on {socket} in {self.start_timeout}s")
            await asyncio.sleep(0.02)
        return socket

    async def _start_vsock_backend(self) -> Path:
        socket = self.workdir / "vhost-vsock.sock"
        cmd = [
            sys.executable, "-m", "pykata.host.vsock", "--socket", str(socket),
            "--uds-path", str(self.hybrid_socket), "--guest-cid", str(self.guest_cid),
        ]  # fmt: skip
        if self.vsock_connect_timeout is not None:
            cmd += ["--connect-timeout", str(self.vsock_connect_timeout)]
        proc = self._spawn("vsock", cmd, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(
                asyncio.to_thread(proc.stdout.readline), self.start_timeout
            )
        except TimeoutError:
            raise VMError(f"vsock back-end not ready in {self.start_timeout}s") from None
        if line.strip() != b"READY":
            self._check_alive("vsock", proc)
            raise VMError(f"vsock back-end said {line!r} instead of READY")
        return socket

    def _check_alive(self, role: str, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is not None:
            tail = (self.workdir / f"{role}.log").read_text(errors="replace")[-2000:]
            raise VMError(f"{role} exited with status {proc.returncode}:\n{tail}")

    def check_running(self) -> None:
        """Raise VMError when any of the VM's processes has died."""
        for role, proc in self.procs.items():
            self._check_alive(role, proc)

    async def wait_console(self, pattern: str, within: float = 120.0) -> str:
        """Wait for a console line matching ``pattern`` (a regex); returns the line."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + within
        while True:
            text = self.console_log.read_text(errors="replace") if self.console_log.exists() else ""
            for line in text.splitlines():
                if regex.search(line):
                    return line
            self.check_running()
            if time.monotonic() > deadline:
                raise VMError(f"no console line matching {pattern!r} within {within}s")
            await asyncio.sleep(0.1)

    async def wait_port(self, port: int, within: float = 120.0) -> None:
        """Wait until a guest service accepts connections on vsock ``port``."""
        deadline = time.monotonic() + within
        while not await self._port_accepts(port):
            self.check_running()
            if time.monotonic() > deadline:
                raise VMError(f"guest vsock port {port} not accepting within {within}s")
            await asyncio.sleep(0.2)

    async def _port_accepts(self, port: int) -> bool:
        if self.kernel_vsock:
            sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(sock, (self.guest_cid, port))
            except OSError:
                return False
            finally:
                sock.close()
            return True
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.hybrid_socket))
        except OSError:
            return False
        try:
            writer.write(f"CONNECT {port}\n".encode())
            return (await reader.readline()).startswith(b"OK ")
        except OSError:
            return False
        finally:
            writer.close()

    async def stop(self, powerdown_timeout: float = 0.0) -> None:
        """Power off (ACPI, if a timeout is given), then quit QEMU; stop the helpers, then
        remove the shared folder's mount (with any container root left below it)."""
        qemu_proc = self.procs.get("qemu")
        if qemu_proc is not None and qemu_proc.poll() is None:
            qmp_socket = self.workdir / "qmp.sock"
            if powerdown_timeout > 0:
                with contextlib.suppress(OSError, TimeoutError):
                    await qemu.qmp(qmp_socket, "system_powerdown")
                    await wait_exit(qemu_proc, powerdown_timeout)
            if qemu_proc.poll() is None:
                with contextlib.suppress(OSError, TimeoutError, ValueError):
                    await qemu.qmp(qmp_socket, "quit")
        for role, exits_alone in EXIT_GRACE.items():
            proc = self.procs.get(role)
            if proc is not None:
                await terminate(proc, exits_alone)
        self.procs.clear()
        for f in self._logs:
            f.close()
        self._logs.clear()
        remove_sockets(self.workdir)
        if self.shared_dir is not None:
            remove_shared_mount(self.shared_dir)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


async def stop_detached(
    workdir: Path, pids: dict[str, int], shared_dir: Path, powerdown_timeout: float = 0.0
) -> None:
    """Stop a VM started by another process (``vm up``) from its recorded pids, and remove
    the mount its start made of the shared folder."""
    qmp_socket = workdir / "qmp.sock"
    qemu_pid = pids.get("qemu")
    if qemu_pid is not None and process_alive(qemu_pid, workdir):
        if powerdown_timeout > 0:
            with contextlib.suppress(OSError, TimeoutError):
                await qemu.qmp(qmp_socket, "system_powerdown")
            await _wait_pid(qemu_pid, workdir, powerdown_timeout)
        if process_alive(qemu_pid, workdir):
            with contextlib.suppress(OSError, TimeoutError, ValueError):
                await qemu.qmp(qmp_socket, "quit")
    for role, exits_alone in EXIT_GRACE.items():
        pid = pids.get(role)
        if pid is None or not await _wait_pid(pid, workdir, exits_alone):
            continue
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if not await _wait_pid(pid, workdir, grace):
                break
    remove_sockets(workdir)
    remove_shared_mount(shared_dir)


async def _wait_pid(pid: int, workdir: Path, seconds: float) -> bool:
    """Wait for ``pid`` to go away; True when it is still running afterwards."""
    deadline = time.monotonic() + seconds
    while process_alive(pid, workdir):
        if time.monotonic() > deadline:
            return True
        await asyncio.sleep(0.05)
    return False
