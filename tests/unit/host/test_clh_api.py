"""kata-clh's HTTP server and API: every endpoint, bad input, fds, disconnects, deadlines.

The machine is a recording double behind the Machine interface (the real QEMU path is
tested in tests/vm/test_clh_launcher.py); everything else (socket, HTTP parsing, routing,
config parsing, fd passing) is the real thing.
"""

from __future__ import annotations

import array
import asyncio
import json
import os
import re
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pykata.host.clh.api import Api
from pykata.host.clh.config import Device, Disk, Net, VmConfig
from pykata.host.clh.errors import MachineFailure
from pykata.host.clh.http import Server
from pykata.host.clh.machine import PciDevice

BDF = re.compile(r"^0000:00:[0-9a-f]{2}\.0$")


class RecordingMachine:
    """Records what the API asked for; hot-plug answers with made-up slots."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.alive = False
        self.slot = 4
        self.fail_next: str | None = None
        self.slow: dict[str, float] = {}
        self.fd_inodes: list[int] = []

    async def _record(self, name: str, arg: Any = None) -> None:
        await asyncio.sleep(self.slow.get(name, 0))
        if self.fail_next == name:
            self.fail_next = None
            raise MachineFailure(f"QEMU refused {name}: test failure")
        self.calls.append((name, arg))

    def _device(self, id_: str | None) -> PciDevice:
        assert id_ is not None
        self.slot += 1
        return PciDevice(id_, f"0000:00:{self.slot:02x}.0")

    async def prepare(self, config: VmConfig) -> None:
        await self._record("prepare", config)

    async def boot(self, config: VmConfig) -> None:
        await self._record("boot", config)
        self.fd_inodes += [os.fstat(fd).st_ino for net in config.net for fd in net.fds]
        self.alive = True

    def running(self) -> bool:
        return self.alive

    async def add_net(self, net: Net) -> PciDevice:
        await self._record("add_net", net)
        self.fd_inodes += [os.fstat(fd).st_ino for fd in net.fds]
        return self._device(net.id)

    async def add_disk(self, disk: Disk) -> PciDevice:
        await self._record("add_disk", disk)
        return self._device(disk.id)

    async def add_device(self, device: Device) -> PciDevice:
        await self._record("add_device", device)
        return self._device(device.id)

    async def remove_device(self, id: str) -> None:
        await self._record("remove_device", id)

    async def set_vcpus(self, count: int) -> None:
        await self._record("set_vcpus", count)

    async def add_memory(self, size: int) -> None:
        await self._record("add_memory", size)

    async def pause(self) -> None:
        await self._record("pause")

    async def resume(self) -> None:
        await self._record("resume")

    async def reboot(self) -> None:
        await self._record("reboot")

    async def power_button(self) -> None:
        await self._record("power_button")

    async def shutdown_vm(self) -> None:
        await self._record("shutdown_vm")
        self.alive = False

    async def close(self) -> None:
        self.calls.append(("close", None))
        self.alive = False


class Launcher:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.machine = RecordingMachine()
        self.shutdowns = 0
        self.api = Api(self.machine, self._shutdown)
        self.server = Server(path, self.api.handle)

    def _shutdown(self) -> None:
        self.shutdowns += 1

    def names(self) -> list[str]:
        return [name for name, _ in self.machine.calls]


@pytest.fixture
async def launcher(tmp_path: Path) -> AsyncIterator[Launcher]:
    launcher = Launcher(tmp_path / "api.sock")
    await launcher.server.start()
    yield launcher
    await launcher.server.close()


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        assert self.headers.get("content-type") == "application/json"
        return json.loads(self.body)


class Client:
    """A raw HTTP/1.1 client on the unix socket, one persistent connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    @classmethod
    async def connect(cls, path: Path) -> Client:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, str(path))
        return cls(sock)

    async def send(self, data: bytes, fds: list[int] | None = None) -> None:
        if fds:
            rights = array.array("i", fds).tobytes()
            self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])
        else:
            await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def _more(self) -> None:
        data = await asyncio.get_running_loop().sock_recv(self.sock, 65536)
        if not data:
            raise ConnectionError("server closed")
        self.buffer += data

    async def reply(self) -> Reply:
        while b"\r\n\r\n" not in self.buffer:
            await self._more()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            await self._more()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Reply(status, headers, body)

    async def call(
        self, method: str, name: str, body: Any = None, fds: list[int] | None = None
    ) -> Reply:
        payload = (
            b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
        )
        head = (
            f"{method} /api/v1/{name} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        await self.send(head.encode() + payload, fds)
        return await asyncio.wait_for(self.reply(), 5)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
async def client(launcher: Launcher) -> AsyncIterator[Client]:
    client = await Client.connect(launcher.path)
    yield client
    client.close()


def vm_config(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    """A VmConfig the way Kata's clh driver writes it."""
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.img"
    kernel.write_bytes(b"k")
    initrd.write_bytes(b"i")
    config: dict[str, Any] = {
        "payload": {
            "kernel": str(kernel),
            "initramfs": str(initrd),
            "cmdline": "panic=1 no_timer_check noreplace-smp quiet",
        },
        "cpus": {
            "boot_vcpus": 1,
            "max_vcpus": 2,
            "topology": {
                "threads_per_core": 1,
                "cores_per_die": 2,
                "dies_per_package": 1,
                "packages": 1,
            },
        },
        "memory": {
            "size": 2048 * 1024 * 1024,
            "hotplug_size": 2048 * 1024 * 1024,
            "shared": True,
            "hugepages": False,
        },
        "fs": [
            {
                "tag": "kataShared",
                "socket": str(tmp_path / "virtiofsd.sock"),
                "num_queues": 1,
                "queue_size": 1024,
            }
        ],
        "vsock": {"cid": 3, "socket": str(tmp_path / "clh.sock")},
        "rng": {"src": "/dev/urandom"},
        "serial": {"mode": "Off"},
        "console": {"mode": "Off"},
        "iommu": False,
        "watchdog": False,
    }
    config.update(changes)
    return config


async def booted(client: Client, tmp_path: Path) -> None:
    assert (await client.call("PUT", "vm.create", vm_config(tmp_path))).status == 204
    assert (await client.call("PUT", "vm.boot")).status == 204


# vmm


async def test_ping_answers_a_version(client: Client) -> None:
    reply = await client.call("GET", "vmm.ping")
    assert reply.status == 200
    body = reply.json()
    assert body["version"] and body["pid"] == os.getpid()


async def test_vmm_shutdown_answers_then_asks_to_stop(launcher: Launcher, client: Client) -> None:
    reply = await client.call("PUT", "vmm.shutdown")
    assert reply.status == 204 and reply.body == b""
    assert launcher.shutdowns == 1


# create, info, boot


async def test_info_before_create_is_404(client: Client) -> None:
    reply = await client.call("GET", "vm.info")
    assert reply.status == 404
    assert "vm.create" in reply.json()["error"]


async def test_create_info_boot_info(launcher: Launcher, client: Client, tmp_path: Path) -> None:
    assert (await client.call("PUT", "vm.create", vm_config(tmp_path))).status == 204
    assert launcher.names() == ["prepare"]
    config = launcher.machine.calls[0][1]
    assert config.cpus.boot_vcpus == 1 and config.memory.size == 2 << 30
    assert config.fs[0].tag == "kataShared" and config.vsock.cid == 3
    info = (await client.call("GET", "vm.info")).json()
    assert info["state"] == "Created"
    assert info["memory_actual_size"] == 2 << 30
    assert info["config"]["payload"]["cmdline"].startswith("panic=1")
    assert (await client.call("PUT", "vm.boot")).status == 204
    assert (await client.call("GET", "vm.info")).json()["state"] == "Running"
    assert (await client.call("PUT", "vm.boot")).status == 405  # booted already


async def test_boot_answers_without_waiting_for_the_guest(
    launcher: Launcher, client: Client, tmp_path: Path
) -> None:
    # The double's guest never comes up; boot must answer anyway, well within 1 s.
    await client.call("PUT", "vm.create", vm_config(tmp_path))
    started = time.monotonic()
    assert (await client.call("PUT", "vm.boot")).status == 204
    assert time.monotonic() - started < 1.0


async def test_boot_before_create_is_404(launcher: Launcher, client: Client) -> None:
    assert (await client.call("PUT", "vm.boot")).status == 404
    assert launcher.machine.calls == []


async def test_create_twice_is_a_conflict(
    launcher: Launcher, client: Client, tmp_path: Path
) -> None:
    await client.call("PUT", "vm.create", vm_config(tmp_path))
    reply = await client.call("PUT", "vm.create", vm_config(tmp_path))
    assert reply.status == 409
    assert launcher.names() == ["prepare"]


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        (lambda c: c.pop("payload"), 400, "payload: expected a JSON object"),
        (lambda c: c["payload"].pop("kernel"), 400, "payload.kernel: missing"),
        (lambda c: c["payload"].update(kernel="/nonexistent/vmlinuz"), 400, "does not exist"),
        (lambda c: c["memory"].update(size="2G"), 400, "memory.size: expected int"),
        (lambda c: c["memory"].update(size=1000), 400, "memory.size: must be >="),
        (lambda c: c["cpus"].update(boot_vcpus=4), 400, "max_vcpus (2) is less than"),
        (lambda c: c["cpus"].update(boot_vcpus=True), 400, "cpus.boot_vcpus: expected int"),
        (lambda c: c["vsock"].update(cid=2), 400, "vsock.cid: must be >= 3"),
        (lambda c: c["fs"][0].pop("socket"), 400, "fs[0].socket: missing"),
        (lambda c: c["serial"].update(mode="Loud"), 400, "serial.mode"),
        (lambda c: c.update(net=[{"mac": "02:00:00:00:00:01"}]), 400, "net[0]: needs TAP fds"),
        (lambda c: c.update(pmem=[{"file": "/x"}]), 501, "pmem"),
        (lambda c: c["serial"].update(mode="Pty"), 501, "serial.mode Pty"),
    ],
)
async def test_bad_vm_config_is_refused_and_nothing_starts(
    launcher: Launcher, client: Client, tmp_path: Path, change: Any, status: int, message: str
) -> None:
    config = vm_config(tmp_path)
    change(config)
    reply = await client.call("PUT", "vm.create", config)
    assert reply.status == status
    assert message in reply.json()["error"]
    assert launcher.machine.calls == []
    assert (await client.call("GET", "vm.info")).status == 404
    # A good config still works afterwards.
    assert (await client.call("PUT", "vm.create", vm_config(tmp_path))).status == 204


@pytest.mark.parametrize("body", [b"", b"{bad", b"[1, 2]", b'"text"', b"\xff\xfe"])
async def test_non_object_bodies_are_400(launcher: Launcher, client: Client, body: bytes) -> None:
    reply = await client.call("PUT", "vm.create", body)
    assert reply.status == 400
    assert reply.json()["error"]
    assert launcher.machine.calls == []


async def test_a_machine_failure_is_500_and_the_vm_is_forgotten(
    launcher: Launcher, client: Client, tmp_path: Path
) -> None:
    launcher.machine.fail_next = "prepare"
    reply = await client.call("PUT", "vm.create", vm_config(tmp_path))
    assert reply.status == 500
    assert "test failure" in reply.json()["error"]
    assert (await client.call("GET", "vm.info")).status == 404
    assert (await client.call("GET", "vmm.ping")).status == 200


async def test_delete_forgets_the_vm(launcher: Launcher, client: Client, tmp_path: Path) -> None:
    await booted(client, tmp_path)
    assert (await client.call("PUT", "vm.delete")).status == 204
    assert "close" in launcher.names()
    assert (await client.call("GET", "vm.info")).status == 404


# power


async def test_pause_resume_reboot_power_button_shutdown(
    launcher: Launcher, client: Client, tmp_path: Path
) -> None:
    await client.call("PUT", "vm.create", vm_config(tmp_path))
    assert (await client.call("PUT", "vm.pause")).status == 405  # not booted
    assert (await client.call("PUT", "vm.boot")).status == 204
    assert (await client.call("PUT", "vm.resume")).status == 405  # not paused
    assert (await client.call("PUT", "vm.pause")).status == 204
    assert (await client.call("GET", "vm.info")).json()["state"] == "Paused"
    assert (await client.call("PUT", "vm.resume")).status == 204
    assert (await client.call("PUT", "vm.reboot")).status == 204
    assert (await client.call("PUT", "vm.power-button")).status == 204
    assert (await client.call("PUT", "vm.shutdown")).status == 204
    assert (await client.call("GET", "vm.info")).json()["state"] == "Shutdown"
    assert [n for n in launcher.names() if n not in ("prepare", "boot")] == [
        "pause", "resume", "reboot", "power_button", "shutdown_vm",
    ]  # fmt: skip


async def test_a_guest_that_powered_off_shows_as_shutdown(
    launcher: Launcher, client: Client, tmp_path: Path
) -> None:
    await booted(client, tmp_path)
    launcher.machine.alive = False  # QEMU exited
    assert (await client.call("GET", "vm.info")).json()["state"] == "Shutdown"
    assert (
        await client.call("PUT", "vm.add-disk", {"path": str(tmp_path / "vmlinuz")})
    ).status == 405


# resize


async def test_resize_unchanged_is_accepted_without_touching_the_vm(
    launcher: Launcher, client: Client, tmp_path: Path
) -> None:
    await booted(client, tmp_path)
    reply = await client.call("PUT", "vm.resize", {"desired_vcpus": 1, "desired_ram": 2 << 30})
    assert reply.status == 204
    assert (await client.call("PUT", "vm.resize", {})).status == 204
    assert launcher.names() == ["prepare", "boot"]


async def test_resize_hot_plugs_vcpus_and_memory(
    launcher: Launcher, client: Client, tmp_path: Path
) -> None:
    await booted(client, tmp_path)
    assert (await client.call("PUT", "vm.resize", {"desired_vcpus": 2})).status == 204
    assert (await client.call("PUT", "vm.resize", {"desired_ram": 3 << 30})).status == 204
    assert launcher.machine.calls[-2:] == [("set_vcpus", 2), ("add_memory", 1 << 30)]
    info = (await client.call("GET", "vm.info")).json()
    assert info["config"]["cpus"]["boot_vcpus"] == 2
    assert info["memory_actual_size"] == 3 << 30


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"desired_vcpus": 3}, 400, "exceeds cpus.max_vcpus"),
        ({"desired_vcpus": 0}, 400, "must be >= 1"),
        ({"desired_vcpus": "2"}, 400, "expected int"),
        ({"desired_ram": 5 << 30}, 400, "exceeds memory.size + memory.hotplug_size"),
        ({"desired_ram": 1 << 30}, 501, "memory cannot be removed"),
        ({"desired_balloon": 1 << 20}, 501, "balloon"),
    ],
)
async def test_resize_refusals_are_clear(
    launcher: Launcher, client: Client, tmp_path: Path, body: Any, status: int, message: str
) -> None:
    await booted(client, tmp_path)
    reply = await client.call("PUT", "vm.resize", body)
    assert reply.status == status
    assert message in reply.json()["error"]
    assert launcher.names() == ["prepare", "boot"]


async def test_resize_before_boot_changes_the_config(
    launcher: Launcher, client: Client, tmp_path: Path
) -> None:
    await client.call("PUT", "vm.create", vm_config(tmp_path))
    assert (
        await client.call("PUT", "vm.resize", {"desired_vcpus": 2, "desired_ram": 3 << 30})
    ).status == 204
    await client.call("PUT", "vm.boot")
    config = launcher.machine.calls[-1][1]
    assert config.cpus.boot_vcpus == 2 and config.memory.size == 3 << 30


# devices


async def test_add_net_before_boot_takes_the_tap_fds(
    launcher: Launcher, client: Client, tmp_path: Path
) -> None:
    await client.call("PUT", "vm.create", vm_config(tmp_path))
    read_end, write_end = os.pipe()
    try:
        body = {"mac": "02:00:00:00:00:01", "num_queues": 2, "queue_size": 256}
        reply = await client.call("PUT", "vm.add-net", body, fds=[read_end])
        assert reply.status == 204 and reply.body == b""
        assert (await client.call("PUT", "vm.boot")).status == 204
        config = launcher.machine.calls[-1][1]
        assert config.net[0].mac == "02:00:00:00:00:01" and config.net[0].id == "_net0"
        # The machine saw our pipe (a new fd number, the same open file).
        assert launcher.machine.fd_inodes == [os.fstat(read_end).st_ino]
        info = (await client.call("GET", "vm.info")).json()
        assert info["config"]["net"][0]["id"] == "_net0"
    finally:
        os.close(read_end)
        os.close(write_end)


async def test_add_net_after_boot_hot_plugs_with_the_fds(
    launcher: Launcher, client: Client, tmp_path: Path
) -> None:
    await booted(client, tmp_path)
    left, right = socket.socketpair()
    with left, right:
        reply = await client.call(
            "PUT", "vm.add-net", {"mac": "02:00:00:00:00:02"}, fds=[left.fileno()]
        )
        assert reply.status == 200
        device = reply.json()
        assert device["id"] == "_net0" and BDF.match(device["bdf"])
        assert launcher.machine.fd_inodes == [os.fstat(left.fileno()).st_ino]


async def test_add_net_without_fds_or_tap_is_400(
    launcher: Launcher, client: Client, tmp_path: Path
) -> None:
    await booted(client, tmp_path)
    reply = await client.call("PUT", "vm.add-net", {"mac": "02:00:00:00:00:02"})
    assert reply.status == 400 and "TAP fds" in reply.json()["error"]
    assert launcher.names() == ["prepare", "boot"]


async def test_add_disk_and_device_then_remove(
    launcher: Launcher, client: Client, tmp_path: Path
) -> None:
    await booted(client, tmp_path)
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * 4096)
    reply = await client.call(
        "PUT", "vm.add-disk", {"path": str(disk), "readonly": True, "id": "clh_drive_0"}
    )
    assert reply.status == 200
    assert reply.json()["id"] == "clh_drive_0" and BDF.match(reply.json()["bdf"])
    reply = await client.call("PUT", "vm.add-device", {"path": str(tmp_path)})
    assert reply.status == 200 and reply.json()["id"] == "_device0"
    again = await client.call("PUT", "vm.add-disk", {"path": str(disk), "id": "clh_drive_0"})
    assert again.status == 409
    assert (await client.call("PUT", "vm.remove-device", {"id": "clh_drive_0"})).status == 204
    assert (await client.call("PUT", "vm.remove-device", {"id": "clh_drive_0"})).status == 404
    assert (await client.call("PUT", "vm.remove-device", {})).status == 400
    assert [n for n, _ in launcher.machine.calls][2:] == ["add_disk", "add_device", "remove_device"]
    info = (await client.call("GET", "vm.info")).json()
    assert info["config"].get("disks") == []


async def test_add_disk_before_boot_is_cold(
    launcher: Launcher, client: Client, tmp_path: Path
) -> None:
    await client.call("PUT", "vm.create", vm_config(tmp_path))
    reply = await client.call("PUT", "vm.add-disk", {"path": str(tmp_path / "vmlinuz")})
    assert reply.status == 204
    await client.call("PUT", "vm.boot")
    assert launcher.machine.calls[-1][1].disks[0].id == "_disk0"


async def test_bad_disk_is_refused(launcher: Launcher, client: Client, tmp_path: Path) -> None:
    await booted(client, tmp_path)
    for body, message in (
        ({"readonly": True}, "disk.path: missing"),
        ({"path": "/nonexistent"}, "does not exist"),
        ({"path": str(tmp_path), "readonly": "yes"}, "disk.readonly: expected bool"),
    ):
        reply = await client.call("PUT", "vm.add-disk", body)
        assert reply.status == 400 and message in reply.json()["error"]
    assert launcher.names() == ["prepare", "boot"]


async def test_a_refused_hot_plug_is_500_and_the_launcher_serves_on(
    launcher: Launcher, client: Client, tmp_path: Path
) -> None:
    await booted(client, tmp_path)
    launcher.machine.fail_next = "add_disk"
    reply = await client.call("PUT", "vm.add-disk", {"path": str(tmp_path / "vmlinuz")})
    assert reply.status == 500 and "refused add_disk" in reply.json()["error"]
    assert (await client.call("GET", "vm.info")).json()["config"].get("disks") is None
    reply = await client.call("PUT", "vm.add-disk", {"path": str(tmp_path / "vmlinuz")})
    assert reply.status == 200


# routing


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/v1/vm.nothing", 404),
        ("GET", "/elsewhere", 404),
        ("PUT", "/api/v1/vmm.ping", 405),
        ("GET", "/api/v1/vm.create", 405),
        ("DELETE", "/api/v1/vm.boot", 405),
        ("PUT", "/api/v1/vm.snapshot", 501),
        ("PUT", "/api/v1/vm.add-pmem", 501),
    ],
)
async def test_unknown_paths_and_methods(
    launcher: Launcher, client: Client, method: str, path: str, status: int
) -> None:
    await client.send(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
    reply = await client.reply()
    assert reply.status == status
    assert reply.json()["error"]
    assert launcher.machine.calls == []


# the HTTP layer


async def test_requests_share_one_connection(client: Client) -> None:
    for _ in range(3):
        assert (await client.call("GET", "vmm.ping")).status == 200


async def test_a_client_gone_mid_body_does_no_harm(launcher: Launcher, tmp_path: Path) -> None:
    cut = await Client.connect(launcher.path)
    body = json.dumps(vm_config(tmp_path)).encode()
    head = f"PUT /api/v1/vm.create HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    await cut.send(head.encode() + body[:20])
    cut.close()
    cut = await Client.connect(launcher.path)
    await cut.send(b"PUT /api/v1/vm.create HTTP/1.1\r\nHost: x\r\nContent-Le")  # head cut too
    cut.close()
    await asyncio.sleep(0.1)
    client = await Client.connect(launcher.path)
    try:
        assert (await client.call("GET", "vmm.ping")).status == 200
        assert (await client.call("GET", "vm.info")).status == 404
        assert launcher.machine.calls == []
    finally:
        client.close()


@pytest.mark.parametrize(
    "head",
    [
        b"garbage\r\n\r\n",
        b"GET /api/v1/vmm.ping\r\n\r\n",
        b"GET /api/v1/vmm.ping HTTP/1.1\r\nno colon here\r\n\r\n",
        b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: lots\r\n\r\n",
        b"PUT /api/v1/vm.create HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
)
async def test_malformed_requests_get_a_4xx_and_the_server_serves_on(
    launcher: Launcher, head: bytes
) -> None:
    bad = await Client.connect(launcher.path)
    try:
        await bad.send(head)
        reply = await asyncio.wait_for(bad.reply(), 5)
        assert 400 <= reply.status < 500
        assert reply.json()["error"]
    finally:
        bad.close()
    client = await Client.connect(launcher.path)
    try:
        assert (await client.call("GET", "vmm.ping")).status == 200
    finally:
        client.close()


async def test_ping_and_info_answer_during_a_slow_hot_plug(
    launcher: Launcher, client: Client, tmp_path: Path
) -> None:
    await booted(client, tmp_path)
    launcher.machine.slow["add_disk"] = 2.0
    plugging = asyncio.create_task(
        client.call("PUT", "vm.add-disk", {"path": str(tmp_path / "vmlinuz")})
    )
    await asyncio.sleep(0.1)
    other = await Client.connect(launcher.path)
    try:
        started = time.monotonic()
        assert (await other.call("GET", "vmm.ping")).status == 200
        assert (await other.call("GET", "vm.info")).status == 200
        assert time.monotonic() - started < 0.5
    finally:
        other.close()
    assert (await plugging).status == 200


async def test_fds_of_a_refused_request_are_closed(launcher: Launcher, client: Client) -> None:
    read_end, write_end = os.pipe()
    try:
        before = set(os.listdir("/proc/self/fd"))
        reply = await client.call("PUT", "vm.add-net", {"mac": "02:00:00:00:00:01"}, fds=[read_end])
        assert reply.status == 404  # no VM
        await asyncio.sleep(0.05)
        assert set(os.listdir("/proc/self/fd")) <= before
    finally:
        os.close(read_end)
        os.close(write_end)
