"""kata-agent-ctl `run --volume`: parsing, file system check, free root ports, and the QMP
conversation (hot-plug, unplug after DEVICE_DELETED) against a fake QEMU monitor."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from pykata.host.ctl import volume
from pykata.host.ctl.errors import UsageError
from pykata.host.ctl.main import parse_args
from pykata.host.ctl.volume import Volume, VolumeError, Volumes, free_ports, parse_volume


def test_parse_volume() -> None:
    assert parse_volume("a.img:/data") == Volume(Path("a.img"), "/data", False)
    assert parse_volume("a.img:/data:ro") == Volume(Path("a.img"), "/data", True)
    assert parse_volume("a.img:/data:rw") == Volume(Path("a.img"), "/data", False)
    for bad in ("a.img", "a.img:data", ":/data", "a.img:/x:rx", "a.img:/../etc", "a:/b:ro:x"):
        with pytest.raises(ValueError, match="--volume"):
            parse_volume(bad)


def test_cli_takes_volumes_and_hotplug_ports(tmp_path: Path) -> None:
    args = parse_args(["run", "--vm", "v", "-v", "a.img:/a", "--volume", "b.img:/b:ro",
                       str(tmp_path), "--", "true"])  # fmt: skip
    assert args.volumes == [Volume(Path("a.img"), "/a"), Volume(Path("b.img"), "/b", True)]
    assert parse_args(["vm", "up", "--hotplug-ports", "2"]).hotplug_ports == 2
    with pytest.raises(SystemExit):
        parse_args(["vm", "up", "--hotplug-ports", "17"])
    with pytest.raises(SystemExit):
        parse_args(["run", "--vm", "v", "-v", "a.img", str(tmp_path), "--", "true"])


def test_volume_needs_a_vm() -> None:
    with pytest.raises(UsageError, match="--vm"):
        volume.usage_check([Volume(Path("a"), "/a")], None)
    volume.usage_check([], None)


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs e2fsprogs")
def test_file_system(tmp_path: Path) -> None:
    image = tmp_path / "fs.img"
    image.write_bytes(bytes(4 << 20))
    with pytest.raises(VolumeError, match="no file system found"):
        volume.file_system(image)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    assert volume.file_system(image) == "ext4"
    with pytest.raises(VolumeError, match="not a file"):
        volume.file_system(tmp_path)
    if shutil.which("mkfs.vfat"):
        subprocess.run(["mkfs.vfat", str(image)], check=True, capture_output=True)
        with pytest.raises(VolumeError, match="vfat is not supported"):
            volume.file_system(image)


def port(qdev_id: str, slot: int, devices: list[dict[str, Any]]) -> dict[str, Any]:
    return {"bus": 0, "slot": slot, "qdev_id": qdev_id, "pci_bridge": {"devices": devices}}


def test_free_ports() -> None:
    pci = [
        {
            "bus": 0,
            "devices": [
                {"bus": 0, "slot": 2, "qdev_id": ""},
                port("hp1", 0x11, []),
                port("hp0", 0x10, [{"slot": 0, "qdev_id": "x"}]),
                port("hp2", 0x12, []),
                {"bus": 0, "slot": 0x1E, "qdev_id": "", "pci_bridge": {"devices": []}},
            ],
        }
    ]
    assert free_ports(pci) == [("hp1", 0x11), ("hp2", 0x12)]


class FakeQemu:
    """A QMP monitor with root ports hp0 (0x10) and hp1 (0x11): device_add fills a port,
    device_del empties it and sends DEVICE_DELETED."""

    def __init__(self, taken: set[str] | None = None) -> None:
        self.ports = {"hp0": 0x10, "hp1": 0x11}
        self.plugged: dict[str, str] = {port: "other" for port in taken or ()}  # port -> id
        self.nodes: set[str] = set()
        self.log: list[str] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'{"QMP": {}}\n')
        while line := await reader.readline():
            request = json.loads(line)
            command, args = request["execute"], request.get("arguments", {})
            self.log.append(command)
            replies = self.answer(command, args)
            for reply in replies:
                writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        writer.close()

    def answer(self, command: str, args: dict[str, Any]) -> list[dict[str, Any]]:
        if command == "query-pci":
            devices = [
                port(name, slot, [{"qdev_id": self.plugged[name]}] if name in self.plugged else [])
                for name, slot in self.ports.items()
            ]
            return [{"return": [{"bus": 0, "devices": devices}]}]
        if command == "blockdev-add":
            self.nodes.add(args["node-name"])
        elif command == "blockdev-del":
            self.nodes.remove(args["node-name"])
        elif command == "device_add":
            if args["bus"] in self.plugged:
                return [{"error": {"desc": "slot 0 already occupied"}}]
            self.plugged[args["bus"]] = args["id"]
        elif command == "device_del":
            (bus,) = [b for b, i in self.plugged.items() if i == args["id"]]
            del self.plugged[bus]
            event = {"event": "DEVICE_DELETED", "data": {"device": args["id"]}}
            return [{"return": {}}, {"event": "X", "data": {}}, event]
        return [{"return": {}}]


@asynccontextmanager
async def fake_qmp(fake: FakeQemu) -> AsyncIterator[Path]:
    with tempfile.TemporaryDirectory(prefix="qmp-") as tmp:
        path = Path(tmp) / "qmp.sock"
        server = await asyncio.start_unix_server(fake.serve, str(path))
        async with server:
            yield path


def ext4(path: Path) -> Path:
    path.write_bytes(bytes(4 << 20))
    subprocess.run(["mkfs.ext4", "-q", "-F", str(path)], check=True)
    return path


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs e2fsprogs")
async def test_attach_and_detach(tmp_path: Path) -> None:
    fake = FakeQemu(taken={"hp0"})
    async with fake_qmp(fake) as sock:
        disks = Volumes(sock, "cid")
        await disks.attach([Volume(ext4(tmp_path / "a.img"), "/data", readonly=True)])
        (item,) = disks.attached
        assert item.storage.driver == "blk"
        assert item.storage.source == "11/00"
        assert item.storage.fstype == "ext4"
        assert list(item.storage.options) == ["ro"]
        assert item.storage.mount_point == "/run/kata-containers/sandbox/storage/cid-vol0"
        assert (item.mount.destination, item.mount.source) == ("/data", item.storage.mount_point)
        assert list(item.mount.options) == ["rbind", "ro"]
        assert fake.plugged["hp1"] == item.device and fake.nodes == {item.node}
        await disks.detach()
        assert fake.plugged == {"hp0": "other"} and not fake.nodes and not disks.attached
        assert fake.log[-3:] == ["qmp_capabilities", "device_del", "blockdev-del"]


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs e2fsprogs")
async def test_no_free_port_unplugs_what_was_plugged(tmp_path: Path) -> None:
    fake = FakeQemu(taken={"hp0"})
    async with fake_qmp(fake) as sock:
        disks = Volumes(sock, "cid")
        volumes = [Volume(ext4(tmp_path / "a.img"), "/a"), Volume(ext4(tmp_path / "b.img"), "/b")]
        with pytest.raises(VolumeError, match=r"no free PCIe root port.*--hotplug-ports"):
            await disks.attach(volumes)
        assert len(disks.attached) == 1 and len(fake.nodes) == 1  # the failed one's node gone
        await disks.detach()
        assert fake.plugged == {"hp0": "other"} and not fake.nodes


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs e2fsprogs")
async def test_unplug_times_out_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeQemu()
    original = fake.answer

    def no_event(command: str, args: dict[str, Any]) -> list[dict[str, Any]]:
        return original(command, args)[:1]

    monkeypatch.setattr(fake, "answer", no_event)
    monkeypatch.setattr(volume, "UNPLUG_TIMEOUT", 0.3)
    async with fake_qmp(fake) as sock:
        disks = Volumes(sock, "cid")
        await disks.attach([Volume(ext4(tmp_path / "a.img"), "/a")])
        with pytest.raises(VolumeError, match=r"no DEVICE_DELETED for pkvol-.* within 0s"):
            await disks.detach()
