"""The QEMU command line for a Kata-style microVM, and a minimal QMP client."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

QEMU_BINARY = "qemu-system-x86_64"
VIRTIOFS_TAG = "kataShared"
# Kata's guest kernels leave page and slab zeroing on allocation off; Debian's kernel turns
# it on, which under TCG doubles the cost of every fork and exec in the guest.
KERNEL_PARAMS = "console=ttyS0 panic=1 init_on_alloc=0"


@dataclass(frozen=True)
class VhostUserVsock:
    """Our vhost-user back-end owns the guest's vsock (no /dev/vhost-vsock here)."""

    socket: Path


@dataclass(frozen=True)
class KernelVsock:
    """The host kernel's vhost-vsock device gives the guest a real CID."""

    guest_cid: int


@dataclass(frozen=True)
class TapNic:
    """A virtio-net NIC on a TAP device QEMU creates (named ``ifname``) in the network
    namespace it runs in; no vhost (no /dev/vhost-net needed), no ifup scripts."""

    ifname: str
    mac: str
    id: str = "net0"


@dataclass(frozen=True)
class MachineSpec:
    kernel: Path
    initrd: Path
    append: str
    accel: str  # "kvm" or "tcg"
    memory_mib: int
    cpus: int
    console_log: Path
    qmp_socket: Path
    vsock: VhostUserVsock | KernelVsock
    virtiofs_socket: Path | None
    name: str = "pykata"
    hotplug_ports: int = 0  # empty PCIe root ports hp0, hp1, ... at slots 0x10, 0x11, ...
    scsi: bool = False  # a virtio-scsi controller (id scsi0) to hot-plug scsi-hd disks on
    nic: TapNic | None = None
    # A file shown to the guest as a persistent memory device (ACPI NFIT, /dev/pmem0); its
    # size is nvdimm_size bytes (the file's, a multiple of 2 MiB).
    nvdimm: Path | None = None
    nvdimm_size: int = 0
    # The console also goes to the FIFOs <console_pipe>.in/.out (QEMU's pipe chardev, which
    # keeps writing console_log as its log), so a reader stamps lines as they arrive.
    console_pipe: Path | None = None


HOTPLUG_PORT_SLOT = 0x10
NVDIMM_ALIGN = 2 << 20


def command(spec: MachineSpec) -> list[str]:
    # Guest RAM must be a shared memfd: vhost-user back-ends map it into their process.
    mem = f"memory-backend-memfd,id=mem,size={spec.memory_mib}M,share=on"
    cpu = "host" if spec.accel == "kvm" else "max"
    machine = f"q35,accel={spec.accel},memory-backend=mem"
    memory = f"{spec.memory_mib}M"
    if spec.nvdimm is not None:
        # An NVDIMM sits in a memory device slot above the RAM: room for it in maxmem.
        machine += ",nvdimm=on"
        extra_mib = -(-spec.nvdimm_size // (1 << 20))
        memory += f",slots=2,maxmem={spec.memory_mib + extra_mib}M"
    if spec.console_pipe is not None:
        console = f"pipe,id=console,path={spec.console_pipe},logfile={spec.console_log}"
    else:
        console = f"file,id=console,path={spec.console_log}"
    cmd = [
        QEMU_BINARY, "-name", spec.name,
        "-machine", machine,
        "-cpu", cpu, "-smp", str(spec.cpus), "-m", memory,
        "-object", mem,
        "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none", "-no-reboot",
        "-chardev", console, "-serial", "chardev:console",
        "-qmp", f"unix:{spec.qmp_socket},server=on,wait=off",
        "-kernel", str(spec.kernel), "-initrd", str(spec.initrd),
        "-append", f"{KERNEL_PARAMS} {spec.append}".strip(),
    ]  # fmt: skip
    if isinstance(spec.vsock, VhostUserVsock):
        cmd += [
            "-chardev", f"socket,id=vsock,path={spec.vsock.socket}",
            "-device", "vhost-user-vsock-pci,chardev=vsock",
        ]  # fmt: skip
    else:
        cmd += ["-device", f"vhost-vsock-pci,guest-cid={spec.vsock.guest_cid}"]
    if spec.virtiofs_socket is not None:
        cmd += [
            "-chardev", f"socket,id=virtiofs,path={spec.virtiofs_socket}",
            "-device", f"vhost-user-fs-pci,chardev=virtiofs,tag={VIRTIOFS_TAG}",
        ]  # fmt: skip
    for index in range(spec.hotplug_ports):
        # q35's root bus takes no hot-plugged devices: they go behind a root port (a bridge).
        slot = HOTPLUG_PORT_SLOT + index
        cmd += [
            "-device",
            f"pcie-root-port,id=hp{index},bus=pcie.0,chassis={index + 1},addr={slot:#x}",
        ]
    if spec.scsi:
        cmd += ["-device", "virtio-scsi-pci,id=scsi0"]
    if spec.nvdimm is not None:
        cmd += [
            "-object",
            f"memory-backend-file,id=nvmem0,share=on,mem-path={spec.nvdimm},"
            f"size={spec.nvdimm_size}",
            "-device", "nvdimm,id=nv0,memdev=nvmem0",
        ]  # fmt: skip
    if spec.nic is not None:
        nic = spec.nic
        cmd += [
            "-netdev", f"tap,id={nic.id},ifname={nic.ifname},script=no,downscript=no,vhost=off",
            "-device", f"virtio-net-pci,netdev={nic.id},mac={nic.mac}",
        ]  # fmt: skip
    return cmd


QMP_TIMEOUT = 5.0


async def qmp(
    socket: Path, execute: str, arguments: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Run one QMP command and return its reply (``{"return": ...}`` or ``{"error": ...}``)."""

    async def talk() -> dict[str, Any]:
        reader, writer = await asyncio.open_unix_connection(str(socket))
        try:
            await reader.readline()  # greeting
            commands: list[dict[str, Any]] = [
                {"execute": "qmp_capabilities"},
                {"execute": execute},
            ]
            if arguments is not None:
                commands[1]["arguments"] = arguments
            for cmd in commands:
                writer.write(json.dumps(cmd).encode() + b"\n")
                await writer.drain()
                while True:
                    line = await reader.readline()
                    if not line:
                        return {"return": {}}  # QEMU exited (quit answers by leaving)
                    reply: dict[str, Any] = json.loads(line)
                    if "event" not in reply:
                        break
            return reply
        finally:
            writer.close()

    return await asyncio.wait_for(talk(), QMP_TIMEOUT)
