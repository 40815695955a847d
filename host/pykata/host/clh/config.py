"""Cloud Hypervisor API bodies (VmConfig, NetConfig, DiskConfig ...) parsed into dataclasses.

Field names and defaults follow Cloud Hypervisor's OpenAPI description. Every error names
the field (``memory.size: expected an integer``) and raises BadRequest; a valid request for
something we do not run raises Unsupported. Fields we do not use are accepted and ignored,
and ``vm.info`` echoes the config as the client sent it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pykata.host.clh.errors import BadRequest, Unsupported

MIB = 1024 * 1024
DEFAULT_MEMORY = 512 * MIB  # Cloud Hypervisor's default
CONSOLE_MODES = ("Off", "Pty", "Tty", "File", "Socket", "Null")
# VmConfig sections we cannot honour; present and non-empty means refuse.
UNSUPPORTED_SECTIONS = (
    "pmem", "vdpa", "numa", "sgx_epc", "tpm", "user_devices", "generic_vhost_user",
    "rate_limit_groups", "pci_segments",
)  # fmt: skip
_MISSING: Any = object()


@dataclass(frozen=True)
class Payload:
    kernel: Path
    initramfs: Path | None
    cmdline: str


@dataclass(frozen=True)
class Cpus:
    boot_vcpus: int
    max_vcpus: int


@dataclass(frozen=True)
class Memory:
    size: int  # bytes
    hotplug_size: int  # bytes that may be added later
    hugepages: bool


@dataclass(frozen=True)
class Fs:
    tag: str
    socket: Path
    queue_size: int
    id: str | None


@dataclass(frozen=True)
class Vsock:
    cid: int
    socket: Path


@dataclass(frozen=True)
class Console:
    mode: str
    file: Path | None


@dataclass(frozen=True)
class Net:
    id: str | None
    tap: str | None
    mac: str | None
    mtu: int | None
    num_queues: int
    fds: tuple[int, ...] = ()


@dataclass(frozen=True)
class Disk:
    id: str | None
    path: Path
    readonly: bool
    direct: bool
    serial: str | None


@dataclass(frozen=True)
class Device:
    id: str | None
    path: Path  # sysfs path of a VFIO device


@dataclass(frozen=True)
class Resize:
    desired_vcpus: int | None
    desired_ram: int | None  # bytes


@dataclass(frozen=True)
class VmConfig:
    payload: Payload
    cpus: Cpus
    memory: Memory
    fs: tuple[Fs, ...]
    vsock: Vsock | None
    rng: Path | None
    serial: Console
    console: Console
    net: tuple[Net, ...]
    disks: tuple[Disk, ...]
    devices: tuple[Device, ...]
    raw: dict[str, Any] = field(compare=False, repr=False)


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{where}: expected a JSON object")
    return value


def _get(obj: dict[str, Any], key: str, where: str, kind: type, default: Any) -> Any:
    value = obj.get(key, _MISSING)
    if value is _MISSING or value is None:
        if default is _MISSING:
            raise BadRequest(f"{where}.{key}: missing (required)")
        return default
    # bool is an int in Python; JSON true is not a number.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRequest(f"{where}.{key}: expected {kind.__name__}, got {value!r}"[:300])
    return value


def _int(
    obj: dict[str, Any], key: str, where: str, default: Any = _MISSING, minimum: int = 0
) -> Any:
    value = _get(obj, key, where, int, default)
    if value is not None and value < minimum:
        raise BadRequest(f"{where}.{key}: must be >= {minimum}, got {value}")
    return value


def _str(obj: dict[str, Any], key: str, where: str, default: Any = _MISSING) -> Any:
    value = _get(obj, key, where, str, default)
    if value == "" and default is _MISSING:
        raise BadRequest(f"{where}.{key}: must not be empty")
    return value


def _bool(obj: dict[str, Any], key: str, where: str, default: bool = False) -> bool:
    value: bool = _get(obj, key, where, bool, default)
    return value


def _list(obj: dict[str, Any], key: str, where: str) -> list[Any]:
    value: list[Any] = _get(obj, key, where, list, [])
    return value


def _existing(path: str, where: str) -> Path:
    if not os.path.exists(path):
        raise BadRequest(f"{where}: {path} does not exist")
    return Path(path)


def parse_payload(obj: dict[str, Any]) -> Payload:
    where = "payload"
    if obj.get("firmware") or obj.get("igvm"):
        raise Unsupported("payload.firmware/igvm: only direct kernel boot is supported")
    kernel = _existing(_str(obj, "kernel", where), "payload.kernel")
    initramfs = _str(obj, "initramfs", where, None)
    return Payload(
        kernel=kernel,
        initramfs=_existing(initramfs, "payload.initramfs") if initramfs else None,
        cmdline=_str(obj, "cmdline", where, ""),
    )


def parse_cpus(obj: dict[str, Any]) -> Cpus:
    boot = _int(obj, "boot_vcpus", "cpus", minimum=1)
    most = _int(obj, "max_vcpus", "cpus", minimum=1)
    if most < boot:
        raise BadRequest(f"cpus.max_vcpus ({most}) is less than cpus.boot_vcpus ({boot})")
    return Cpus(boot, most)


def parse_memory(obj: dict[str, Any]) -> Memory:
    size = _int(obj, "size", "memory", minimum=MIB)
    if size % MIB:
        raise BadRequest(f"memory.size: {size} is not a whole number of MiB")
    hotplug = _int(obj, "hotplug_size", "memory", 0)
    if hotplug % MIB:
        raise BadRequest(f"memory.hotplug_size: {hotplug} is not a whole number of MiB")
    if obj.get("zones"):
        raise Unsupported("memory.zones: memory zones are not supported")
    return Memory(size, hotplug, _bool(obj, "hugepages", "memory"))


def parse_fs(obj: dict[str, Any], where: str) -> Fs:
    return Fs(
        tag=_str(obj, "tag", where),
        socket=Path(_str(obj, "socket", where)),
        queue_size=_int(obj, "queue_size", where, 1024, minimum=1),
        id=_str(obj, "id", where, None),
    )


def parse_vsock(obj: dict[str, Any]) -> Vsock:
    return Vsock(
        cid=_int(obj, "cid", "vsock", minimum=3), socket=Path(_str(obj, "socket", "vsock"))
    )


def parse_console(obj: dict[str, Any], where: str) -> Console:
    mode = _str(obj, "mode", where)
    if mode not in CONSOLE_MODES:
        raise BadRequest(f"{where}.mode: {mode!r} is not one of {', '.join(CONSOLE_MODES)}")
    if mode in ("Pty", "Socket"):
        raise Unsupported(f"{where}.mode {mode}: only Off, Null, Tty and File are supported")
    file = _str(obj, "file", where, None)
    if mode == "File" and not file:
        raise BadRequest(f"{where}.file: required with mode File")
    return Console(mode, Path(file) if file else None)


def parse_net(obj: Any, where: str = "net", fds: tuple[int, ...] = ()) -> Net:
    obj = _obj(obj, where)
    if obj.get("vhost_user"):
        raise Unsupported(f"{where}.vhost_user: vhost-user network devices are not supported")
    net = Net(
        id=_str(obj, "id", where, None),
        tap=_str(obj, "tap", where, None),
        mac=_str(obj, "mac", where, None),
        mtu=_int(obj, "mtu", where, None, minimum=68),
        num_queues=_int(obj, "num_queues", where, 2, minimum=2),
        fds=fds,
    )
    if not net.fds and not net.tap:
        raise BadRequest(f"{where}: needs TAP fds (SCM_RIGHTS) or a tap name")
    return net


def parse_disk(obj: Any, where: str = "disk") -> Disk:
    obj = _obj(obj, where)
    if obj.get("vhost_user"):
        raise Unsupported(f"{where}.vhost_user: vhost-user disks are not supported")
    return Disk(
        id=_str(obj, "id", where, None),
        path=_existing(_str(obj, "path", where), f"{where}.path"),
        readonly=_bool(obj, "readonly", where),
        direct=_bool(obj, "direct", where),
        serial=_str(obj, "serial", where, None),
    )


def parse_device(obj: Any, where: str = "device") -> Device:
    obj = _obj(obj, where)
    return Device(
        id=_str(obj, "id", where, None),
        path=_existing(_str(obj, "path", where), f"{where}.path"),
    )


def parse_resize(obj: Any) -> Resize:
    obj = _obj(obj, "resize")
    if obj.get("desired_balloon"):
        raise Unsupported("resize.desired_balloon: there is no balloon device")
    resize = Resize(
        desired_vcpus=_int(obj, "desired_vcpus", "resize", None, minimum=1),
        desired_ram=_int(obj, "desired_ram", "resize", None, minimum=MIB),
    )
    if resize.desired_ram is not None and resize.desired_ram % MIB:
        raise BadRequest(f"resize.desired_ram: {resize.desired_ram} is not a whole number of MiB")
    return resize


def parse_remove(obj: Any) -> str:
    id_: str = _str(_obj(obj, "remove-device"), "id", "remove-device")
    return id_


def parse_vm_config(obj: Any) -> VmConfig:
    obj = _obj(obj, "VmConfig")
    for section in UNSUPPORTED_SECTIONS:
        if obj.get(section):
            raise Unsupported(f"{section}: not supported by this launcher")
    if (obj.get("platform") or {}).get("tdx") or (obj.get("platform") or {}).get("sev_snp"):
        raise Unsupported("platform: confidential guests are not supported")
    cpus = obj.get("cpus")
    memory = obj.get("memory")
    vsock = obj.get("vsock")
    rng = obj.get("rng")
    off = {"mode": "Off"}
    console = parse_console(_obj(obj.get("console", off), "console"), "console")
    if console.mode not in ("Off", "Null"):
        raise Unsupported("console.mode: the virtio console is not supported (use serial)")
    return VmConfig(
        payload=parse_payload(_obj(obj.get("payload"), "payload")),
        cpus=parse_cpus(_obj(cpus, "cpus")) if cpus is not None else Cpus(1, 1),
        memory=(
            parse_memory(_obj(memory, "memory"))
            if memory is not None
            else Memory(DEFAULT_MEMORY, 0, False)
        ),
        fs=tuple(
            parse_fs(_obj(f, f"fs[{i}]"), f"fs[{i}]")
            for i, f in enumerate(_list(obj, "fs", "VmConfig"))
        ),
        vsock=parse_vsock(_obj(vsock, "vsock")) if vsock is not None else None,
        rng=(
            _existing(_str(_obj(rng, "rng"), "src", "rng", "/dev/urandom"), "rng.src")
            if rng is not None
            else None
        ),
        serial=parse_console(_obj(obj.get("serial", off), "serial"), "serial"),
        console=console,
        net=tuple(parse_net(n, f"net[{i}]") for i, n in enumerate(_list(obj, "net", "VmConfig"))),
        disks=tuple(
            parse_disk(d, f"disks[{i}]") for i, d in enumerate(_list(obj, "disks", "VmConfig"))
        ),
        devices=tuple(
            parse_device(d, f"devices[{i}]")
            for i, d in enumerate(_list(obj, "devices", "VmConfig"))
        ),
        raw=obj,
    )
