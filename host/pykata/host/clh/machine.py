"""The VM behind the API: QEMU, our vhost-user-vsock back-end, and hot-plug over QMP.

Machine type ``pc`` (i440fx): Cloud Hypervisor reports every device as ``0000:00:SS.0`` and
Kata derives the guest PCI path from that slot, so devices must sit on bus 0 and hot-plug
there. q35's root bus (pcie.0) does not take hot-plugged devices (they need root ports,
i.e. another bus); the i440fx root bus does, through ACPI PCI hot-plug. Every device gets
an explicit slot so the answer to ``add-*`` is known, not guessed.

Processes: the vsock back-end (started at ``vm.create`` so it is listening by
``vm.boot``) and QEMU; both die with the launcher (PR_SET_PDEATHSIG). The guest's serial
port goes to a pipe we read: into ``clh-console.log`` beside the API socket always, and to
our stdout (``Tty``) or a file (``File``) as the VmConfig asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from pykata.host.clh.config import MIB, Device, Disk, Net, VmConfig
from pykata.host.clh.errors import MachineFailure, NoSuchDevice, Unsupported
from pykata.host.clh.qmp import Qmp, QmpError
from pykata.host.vm import kvm
from pykata.host.vm.process import die_with_parent, terminate, wait_exit
from pykata.host.vm.qemu import QEMU_BINARY

log = logging.getLogger(__name__)

# pc: 00.0 is the host bridge, 01.x the PIIX3 functions; the rest of bus 0 is ours.
FIRST_SLOT = 2
LAST_SLOT = 31
MEMORY_SLOTS = 8
VHOST_NET = Path("/dev/vhost-net")
BACKEND_READY_TIMEOUT = 8.0
UNPLUG_WAIT = 3.0  # of the shim's 5 s hot-plug deadline
QUIT_WAIT = 1.0  # QEMU after QMP quit; vmm.shutdown must be done within 3 s


@dataclass(frozen=True)
class PciDevice:
    id: str
    bdf: str

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "bdf": self.bdf}


class Machine(Protocol):
    """What the API needs from a VM. QemuMachine is the real one."""

    async def prepare(self, config: VmConfig) -> None:
        """vm.create: get ready to boot (start helpers that must listen before QEMU)."""

    async def boot(self, config: VmConfig) -> None:
        """vm.boot: start the VM and return without waiting for the guest."""

    def running(self) -> bool:
        """True while the VM runs (False once it powered off or was shut down)."""

    async def add_net(self, net: Net) -> PciDevice: ...
    async def add_disk(self, disk: Disk) -> PciDevice: ...
    async def add_device(self, device: Device) -> PciDevice: ...
    async def remove_device(self, id: str) -> None: ...
    async def set_vcpus(self, count: int) -> None: ...
    async def add_memory(self, size: int) -> None: ...
    async def pause(self) -> None: ...
    async def resume(self) -> None: ...
    async def reboot(self) -> None: ...
    async def power_button(self) -> None: ...
    async def shutdown_vm(self) -> None: ...

    async def close(self) -> None:
        """Stop QEMU and every helper; the machine can be prepared again afterwards."""


def bdf(slot: int) -> str:
    return f"0000:00:{slot:02x}.0"


@dataclass
class _Plugged:
    qemu_id: str
    slot: int
    backend: tuple[str, str] | None  # (QMP command, argument) that frees its back-end


class QemuMachine:
    def __init__(self, state_dir: Path, accel: str = "auto", console: IO[bytes] | None = None):
        self.state_dir = state_dir
        self.accel_choice = accel
        self.console = console if console is not None else sys.stdout.buffer
        self.qmp_socket = state_dir / "clh-qmp.sock"
        self.vhost_socket = state_dir / "clh-vhost-vsock.sock"
        self.console_log = state_dir / "clh-console.log"
        self.accel: str | None = None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.qmp: Qmp | None = None
        self.devices: dict[str, _Plugged] = {}  # API id -> where it sits
        self.unplugging: dict[str, _Plugged] = {}  # QEMU id -> device the guest still holds
        self.hot_cpus: list[str] = []
        self.dimms = 0
        self._names = 0
        self._pump: asyncio.Task[None] | None = None
        self._logs: list[IO[bytes]] = []
        self._config: VmConfig | None = None

    # helpers

    def _name(self, kind: str) -> str:
        self._names += 1
        return f"{kind}{self._names}"

    def _free_slot(self) -> int:
        used = {d.slot for d in (*self.devices.values(), *self.unplugging.values())}
        for slot in range(FIRST_SLOT, LAST_SLOT + 1):
            if slot not in used:
                return slot
        raise MachineFailure("no free PCI slot left on bus 0")

    def _spawn(self, role: str, cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        logfile = open(self.state_dir / f"clh-{role}.log", "wb")  # noqa: SIM115 (lives with the child)
        self._logs.append(logfile)
        kwargs.setdefault("stdout", logfile)
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stderr=logfile, preexec_fn=die_with_parent, **kwargs
        )
        self.procs[role] = proc
        log.info("started %s (pid %d): %s", role, proc.pid, " ".join(cmd))
        return proc

    def _tail(self, role: str) -> str:
        path = self.state_dir / f"clh-{role}.log"
        return path.read_text(errors="replace")[-1500:] if path.exists() else ""

    async def _execute(
        self, command: str, arguments: dict[str, Any] | None = None, **kw: Any
    ) -> Any:
        if self.qmp is None or not self.running():
            raise MachineFailure(f"{command}: QEMU is not running")
        try:
            return await self.qmp.execute(command, arguments, **kw)
        except QmpError as e:
            raise MachineFailure(f"QEMU refused {command}: {e}") from None

    # lifecycle

    async def prepare(self, config: VmConfig) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._config = config
        if config.vsock is not None:
            self.vhost_socket.unlink(missing_ok=True)
            cmd = [
                sys.executable, "-m", "pykata.host.vsock", "--socket", str(self.vhost_socket),
                "--uds-path", str(config.vsock.socket), "--guest-cid", str(config.vsock.cid),
            ]  # fmt: skip
            self._spawn("vsock", cmd, stdout=subprocess.PIPE)

    async def _backend_ready(self) -> None:
        proc = self.procs.get("vsock")
        if proc is None:
            return
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(
                asyncio.to_thread(proc.stdout.readline), BACKEND_READY_TIMEOUT
            )
        except TimeoutError:
            raise MachineFailure(f"vsock back-end not ready in {BACKEND_READY_TIMEOUT}s") from None
        if line.strip() != b"READY":
            raise MachineFailure(f"vsock back-end failed: {line!r}\n{self._tail('vsock')}")

    def _choose_accel(self, kernel: Path) -> str:
        if self.accel_choice in ("kvm", "tcg"):
            return self.accel_choice
        known = kvm.known_verdict(kernel)
        if known is not None:
            return "kvm" if known else "tcg"
        # Probing takes up to 20 s, far beyond the shim's boot deadline: boot under TCG
        # now and leave the answer cached for the next VM.
        threading.Thread(target=kvm.kvm_works, args=(kernel,), daemon=True).start()
        return "tcg"

    async def boot(self, config: VmConfig) -> None:
        self._config = config
        self.accel = self._choose_accel(config.payload.kernel)
        await self._backend_ready()
        cmd, pass_fds = self.command(config)
        self.qmp_socket.unlink(missing_ok=True)
        proc = self._spawn("qemu", cmd, stdout=subprocess.PIPE, pass_fds=pass_fds)
        self._pump = asyncio.create_task(self._pump_console(proc, config))
        try:
            self.qmp = await Qmp.connect(self.qmp_socket)
        except QmpError as e:
            await wait_exit(proc, 0.5)
            raise MachineFailure(f"QEMU did not start: {e}\n{self._tail('qemu')}") from None
        log.info("QEMU running (%s)", self.accel)

    def command(self, config: VmConfig) -> tuple[list[str], tuple[int, ...]]:
        """The QEMU command line for ``config`` (assigning slots to its devices), and the
        fds QEMU must inherit."""
        memory = config.memory
        size_mib = memory.size // MIB
        cpus = config.cpus
        mem = f"memory-backend-memfd,id=mem,size={size_mib}M,share=on"
        if memory.hugepages:
            mem += ",hugetlb=on"
        m = f"{size_mib}M"
        if memory.hotplug_size:
            m += f",slots={MEMORY_SLOTS},maxmem={(memory.size + memory.hotplug_size) // MIB}M"
        accel = self.accel or "tcg"
        cmd = [
            QEMU_BINARY, "-name", "pykata-clh",
            "-machine", f"pc,accel={accel},memory-backend=mem",
            "-cpu", "host" if accel == "kvm" else "max",
            "-smp", f"{cpus.boot_vcpus},maxcpus={cpus.max_vcpus},sockets=1,"
                    f"cores={cpus.max_vcpus},threads=1",
            "-m", m, "-object", mem,
            "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none", "-no-reboot",
            "-chardev", "stdio,id=serial,signal=off", "-serial", "chardev:serial",
            "-qmp", f"unix:{self.qmp_socket},server=on,wait=off",
            "-kernel", str(config.payload.kernel),
            "-append", config.payload.cmdline,
        ]  # fmt: skip
        if config.payload.initramfs is not None:
            cmd += ["-initrd", str(config.payload.initramfs)]

        def place(api_id: str, qemu_id: str, backend: tuple[str, str] | None = None) -> str:
            slot = self._free_slot()
            self.devices[api_id] = _Plugged(qemu_id, slot, backend)
            return f"id={qemu_id},addr={slot:#04x}"

        for i, fs in enumerate(config.fs):
            api_id = fs.id or f"_fs{i}"
            cmd += [
                "-chardev", f"socket,id=fschr{i},path={fs.socket}",
                "-device", f"vhost-user-fs-pci,chardev=fschr{i},tag={fs.tag},"
                           f"queue-size={min(fs.queue_size, 1024)},{place(api_id, f'fs{i}')}",
            ]  # fmt: skip
        if config.vsock is not None:
            cmd += [
                "-chardev", f"socket,id=vsockchr,path={self.vhost_socket}",
                "-device", f"vhost-user-vsock-pci,chardev=vsockchr,{place('_vsock0', 'vsock0')}",
            ]  # fmt: skip
        if config.rng is not None:
            cmd += [
                "-object", f"rng-random,id=rng0,filename={config.rng}",
                "-device", f"virtio-rng-pci,rng=rng0,{place('_rng0', 'rng0')}",
            ]  # fmt: skip
        pass_fds: list[int] = []
        for net in config.net:
            assert net.id is not None
            qemu_id = self._name("net")
            cmd += ["-netdev", _tap_netdev(net, qemu_id)]
            cmd += ["-device", f"{_device_arg(_net_props(net, qemu_id))},{place(net.id, qemu_id)}"]
            pass_fds += net.fds
        for disk in config.disks:
            assert disk.id is not None
            node = self._name("blk")
            cmd += ["-blockdev", json.dumps(_blockdev(disk, node))]
            cmd += ["-device", f"{_device_arg(_disk_props(disk, node))},{place(disk.id, node)}"]
        for device in config.devices:
            assert device.id is not None
            qemu_id = self._name("vfio")
            cmd += ["-device", f"vfio-pci,sysfsdev={device.path},{place(device.id, qemu_id)}"]
        return cmd, tuple(pass_fds)

    async def _pump_console(self, proc: subprocess.Popen[bytes], config: VmConfig) -> None:
        assert proc.stdout is not None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), proc.stdout
        )
        # Small local files, opened once per boot.
        sinks: list[IO[bytes]] = [open(self.console_log, "ab", buffering=0)]  # noqa: SIM115, ASYNC230
        if config.serial.mode == "File" and config.serial.file is not None:
            sinks.append(open(config.serial.file, "ab", buffering=0))  # noqa: SIM115, ASYNC230
        tty = config.serial.mode == "Tty"
        try:
            while data := await reader.read(65536):
                for sink in sinks:
                    sink.write(data)
                if tty:
                    with contextlib.suppress(OSError, ValueError):
                        # The shim's console may be slow to read: never stall the loop.
                        await asyncio.to_thread(self._write_console, data)
        finally:
            transport.close()
            for sink in sinks:
                sink.close()

    def _write_console(self, data: bytes) -> None:
        self.console.write(data)
        self.console.flush()

    def running(self) -> bool:
        proc = self.procs.get("qemu")
        return proc is not None and proc.poll() is None

    # hot-plug

    async def _reap_unplugged(self) -> None:
        """Free the slots and back-ends of devices the guest has let go of since."""
        if self.qmp is None:
            return
        for event in [e for e in self.qmp.events if e.get("event") == "DEVICE_DELETED"]:
            self.qmp.events.remove(event)
            plugged = self.unplugging.pop(event.get("data", {}).get("device"), None)
            if plugged is not None:
                await self._release(plugged)

    async def _release(self, plugged: _Plugged) -> None:
        if plugged.backend is not None:
            command, value = plugged.backend
            key = "node-name" if command == "blockdev-del" else "id"
            with contextlib.suppress(MachineFailure):
                await self._execute(command, {key: value})

    async def _plug(
        self, api_id: str, qemu_id: str, device: dict[str, Any], backend: tuple[str, str] | None
    ) -> PciDevice:
        slot = self._free_slot()
        await self._execute("device_add", {**device, "id": qemu_id, "addr": f"{slot:#04x}"})
        self.devices[api_id] = _Plugged(qemu_id, slot, backend)
        return PciDevice(api_id, bdf(slot))

    async def add_net(self, net: Net) -> PciDevice:
        assert net.id is not None
        await self._reap_unplugged()
        qemu_id = self._name("net")
        options: dict[str, Any] = {"type": "tap", "id": qemu_id}
        if net.fds:
            names = []
            for i, fd in enumerate(net.fds):
                names.append(f"{qemu_id}fd{i}")
                await self._execute("getfd", {"fdname": names[-1]}, fds=[fd])
            options["fds" if len(names) > 1 else "fd"] = ":".join(names)
        else:
            options.update(ifname=net.tap, script="no", downscript="no")
        options["vhost"] = VHOST_NET.exists()  # noqa: ASYNC240 (a stat of a device node)
        await self._execute("netdev_add", options)
        try:
            return await self._plug(
                net.id, qemu_id, _net_props(net, qemu_id), ("netdev_del", qemu_id)
            )
        except MachineFailure:
            with contextlib.suppress(MachineFailure):
                await self._execute("netdev_del", {"id": qemu_id})
            raise

    async def add_disk(self, disk: Disk) -> PciDevice:
        assert disk.id is not None
        await self._reap_unplugged()
        node = self._name("blk")
        await self._execute("blockdev-add", _blockdev(disk, node))
        try:
            return await self._plug(disk.id, node, _disk_props(disk, node), ("blockdev-del", node))
        except MachineFailure:
            with contextlib.suppress(MachineFailure):
                await self._execute("blockdev-del", {"node-name": node})
            raise

    async def add_device(self, device: Device) -> PciDevice:
        assert device.id is not None
        await self._reap_unplugged()
        qemu_id = self._name("vfio")
        spec = {"driver": "vfio-pci", "sysfsdev": str(device.path)}
        return await self._plug(device.id, qemu_id, spec, None)

    async def remove_device(self, id: str) -> None:
        plugged = self.devices.get(id)
        if plugged is None:
            raise NoSuchDevice(f"no device with id {id!r}")
        await self._execute("device_del", {"id": plugged.qemu_id})
        # The slot stays taken until the guest has ejected the device; "-" marks it gone
        # from the API's point of view.
        del self.devices[id]
        self.devices[f"-{id}"] = plugged
        assert self.qmp is not None
        await self.qmp.wait_event("DEVICE_DELETED", {"device": plugged.qemu_id}, UNPLUG_WAIT)
        self.qmp.events.append({"event": "DEVICE_DELETED", "data": {"device": plugged.qemu_id}})
        await self._reap_unplugged()

    async def set_vcpus(self, count: int) -> None:
        cpus = await self._execute("query-hotpluggable-cpus")
        present = sum(1 for c in cpus if "qom-path" in c)
        if count > present:
            free = sorted(
                (c for c in cpus if "qom-path" not in c),
                key=lambda c: tuple(sorted(c["props"].items())),
            )
            for entry in free[: count - present]:
                qemu_id = f"cpu{entry['props'].get('core-id', len(self.hot_cpus))}"
                await self._execute(
                    "device_add", {"driver": entry["type"], "id": qemu_id, **entry["props"]}
                )
                self.hot_cpus.append(qemu_id)
        elif count < present:
            if present - count > len(self.hot_cpus):
                raise Unsupported(
                    f"cannot go below the {present - len(self.hot_cpus)} boot vCPUs "
                    "(only hot-plugged vCPUs can be removed)"
                )
            for _ in range(present - count):
                await self._execute("device_del", {"id": self.hot_cpus.pop()})

    async def add_memory(self, size: int) -> None:
        config = self._config
        if config is None or not config.memory.hotplug_size:
            raise Unsupported("memory hot-plug needs memory.hotplug_size in the VmConfig")
        if self.dimms >= MEMORY_SLOTS:
            raise Unsupported(f"all {MEMORY_SLOTS} memory hot-plug slots are used")
        self.dimms += 1
        name = f"dimm{self.dimms}"
        backend = {
            "qom-type": "memory-backend-memfd",
            "id": f"{name}mem",
            "size": size,
            "share": True,
        }
        await self._execute("object-add", backend)
        try:
            await self._execute(
                "device_add", {"driver": "pc-dimm", "id": name, "memdev": f"{name}mem"}
            )
        except MachineFailure:
            with contextlib.suppress(MachineFailure):
                await self._execute("object-del", {"id": f"{name}mem"})
            raise

    async def pause(self) -> None:
        await self._execute("stop")

    async def resume(self) -> None:
        await self._execute("cont")

    async def reboot(self) -> None:
        await self._execute("system_reset")

    async def power_button(self) -> None:
        await self._execute("system_powerdown")

    async def shutdown_vm(self) -> None:
        await self._stop_qemu()

    async def _stop_qemu(self) -> None:
        proc = self.procs.get("qemu")
        if proc is not None and proc.poll() is None and self.qmp is not None:
            with contextlib.suppress(QmpError, OSError):
                await asyncio.wait_for(self.qmp.execute("quit"), QUIT_WAIT / 2)
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None
        if proc is not None:
            await terminate(proc, QUIT_WAIT, grace=0.5)
            del self.procs["qemu"]
        if self._pump is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pump, 0.5)
            self._pump = None

    def kill(self) -> None:
        """SIGKILL every process still running (when close() took too long)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()

    async def close(self) -> None:
        await self._stop_qemu()
        backend = self.procs.pop("vsock", None)
        if backend is not None:
            await terminate(backend, 0.0, grace=0.5)
        for proc in self.procs.values():
            await terminate(proc, 0.0, grace=0.5)
        self.procs.clear()
        for f in self._logs:
            f.close()
        self._logs.clear()
        self.devices.clear()
        self.unplugging.clear()
        self.hot_cpus.clear()
        self.dimms = 0
        for path in (self.qmp_socket, self.vhost_socket):
            path.unlink(missing_ok=True)


def _tap_netdev(net: Net, qemu_id: str) -> str:
    parts = [f"tap,id={qemu_id}"]
    if net.fds:
        parts.append(("fds=" if len(net.fds) > 1 else "fd=") + ":".join(map(str, net.fds)))
    else:
        parts.append(f"ifname={net.tap},script=no,downscript=no")
    # Without /dev/vhost-net QEMU would fail to open it: use its own virtio-net back-end.
    parts.append("vhost=" + ("on" if VHOST_NET.exists() else "off"))
    return ",".join(parts)


def _net_props(net: Net, netdev: str) -> dict[str, Any]:
    props: dict[str, Any] = {"driver": "virtio-net-pci", "netdev": netdev}
    if net.mac:
        props["mac"] = net.mac
    if net.mtu:
        props["host_mtu"] = net.mtu
    if len(net.fds) > 1:
        props.update(mq=True, vectors=2 * len(net.fds) + 2)
    return props


def _blockdev(disk: Disk, node: str) -> dict[str, Any]:
    return {
        "driver": "raw",
        "node-name": node,
        "read-only": disk.readonly,
        "cache": {"direct": disk.direct},
        "file": {"driver": "file", "filename": str(disk.path), "read-only": disk.readonly},
    }


def _disk_props(disk: Disk, node: str) -> dict[str, Any]:
    props: dict[str, Any] = {"driver": "virtio-blk-pci", "drive": node}
    if disk.serial:
        props["serial"] = disk.serial
    return props


def _device_arg(props: dict[str, Any]) -> str:
    """QMP-style device properties as a -device argument."""
    text = [props["driver"]]
    for key, value in props.items():
        if key != "driver":
            value = ("on" if value else "off") if isinstance(value, bool) else value
            text.append(f"{key}={value}")
    return ",".join(text)


def _backend_argument(command: str, value: str) -> dict[str, str]:
    return {"node-name": value} if command == "blockdev-del" else {"id": value}
