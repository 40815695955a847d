"""The vhost-user-vsock back-end end to end: one TCG guest running tests/vm/guest_echo.

Guest services (see vsock_echo.c): 5000 echo, 5001 sink (replies "<bytes> <crc32>"),
5002 source (sends N bytes + crc32 trailer), 5003 dial (guest connects to a host port).
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import shutil
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from guest_echo.build import build_guest

from pykata.host.vm.runner import VM

pytestmark = [
    pytest.mark.vm,
    pytest.mark.asyncio(loop_scope="module"),
]

ECHO, SINK, SOURCE, DIAL = 5000, 5001, 5002, 5003
MB = 1 << 20
CHUNK = MB

AsyncTest = Callable[..., Awaitable[None]]


def deadline(seconds: float) -> Callable[[AsyncTest], AsyncTest]:
    """Fail a test that hangs (a lost packet or wakeup) instead of stalling the run."""

    def wrap(test: AsyncTest) -> AsyncTest:
        @functools.wraps(test)
        async def run(*args: Any, **kwargs: Any) -> None:
            async with asyncio.timeout(seconds):
                await test(*args, **kwargs)

        return run

    return wrap


class Refused(Exception):
    pass


async def hybrid_connect(vm: VM, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(str(vm.hybrid_socket), limit=4 * MB)
    writer.write(f"CONNECT {port}\n".encode())
    line = await reader.readline()
    if not line:
        writer.close()
        raise Refused(port)
    assert line.startswith(b"OK ") and line[3:].strip().isdigit(), line
    return reader, writer


def random_chunks(seed: int, total: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(min(CHUNK, total - off)) for off in range(0, total, CHUNK)]


@pytest.fixture(scope="module")
def vm_workdir() -> Iterator[Path]:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"pykata-vsock-{os.getpid()}"
    path.mkdir(exist_ok=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vm(vm_workdir: Path) -> AsyncIterator[VM]:
    guest = await asyncio.to_thread(build_guest)
    shared = vm_workdir / "shared"
    machine = VM(
        guest.kernel,
        guest.initrd,
        shared_dir=shared,
        workdir=vm_workdir / "vm",
        memory_mib=512,
        accel="tcg",  # the test guest is tiny; TCG keeps the run the same everywhere
        # The guest's services listen before "ready": a held CONNECT to a closed port need
        # not wait the default minute to be refused.
        vsock_connect_timeout=3,
    )
    async with machine:
        await machine.wait_console("guest-echo: ready", within=120)
        yield machine
        pids = list(machine.pids.values())
    assert_cleaned_up(pids, vm_workdir / "vm")


def assert_cleaned_up(pids: list[int], workdir: Path) -> None:
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()], "processes left behind"
    assert not list(workdir.glob("*.sock*")), "sockets left behind"


@deadline(180)
async def test_connect_handshake_and_echo(vm: VM) -> None:
    reader, writer = await hybrid_connect(vm, ECHO)
    writer.write(b"hello over hybrid vsock\n")
    assert await reader.readline() == b"hello over hybrid vsock\n"
    writer.close()


@deadline(180)
async def test_handshake_with_data_in_the_same_write(vm: VM) -> None:
    reader, writer = await asyncio.open_unix_connection(str(vm.hybrid_socket))
    writer.write(b"CONNECT 5000\nsame segment\n")
    assert (await reader.readline()).startswith(b"OK ")
    assert await reader.readline() == b"same segment\n"
    writer.close()


@deadline(180)
async def test_closed_port_is_refused_after_the_hold(vm: VM) -> None:
    with pytest.raises(Refused):
        await hybrid_connect(vm, 4444)


@deadline(180)
async def test_bad_handshake_is_closed(vm: VM) -> None:
    reader, writer = await asyncio.open_unix_connection(str(vm.hybrid_socket))
    writer.write(b"HELLO 5000\n")
    assert await reader.read() == b""
    writer.close()


async def sink(vm: VM, chunks: list[bytes]) -> tuple[int, int]:
    reader, writer = await hybrid_connect(vm, SINK)
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
    writer.write_eof()
    count, crc = (await reader.readline()).split()
    writer.close()
    return int(count), int(crc)


async def source(vm: VM, size: int) -> bytes:
    reader, writer = await hybrid_connect(vm, SOURCE)
    writer.write(f"{size}\n".encode())
    data = bytearray()
    while block := await reader.read(4 * MB):
        data += block
    writer.close()
    return bytes(data)


def check_source(data: bytes, size: int) -> None:
    assert len(data) == size + 4
    assert zlib.crc32(data[:-4]) == int.from_bytes(data[-4:], "little")


@deadline(180)
async def test_100mb_host_to_guest(vm: VM) -> None:
    chunks = random_chunks(1, 100 * MB)
    crc = 0
    for chunk in chunks:
        crc = zlib.crc32(chunk, crc)
    assert await sink(vm, chunks) == (100 * MB, crc)


@deadline(180)
async def test_100mb_guest_to_host(vm: VM) -> None:
    check_source(await source(vm, 100 * MB), 100 * MB)


@deadline(180)
async def test_64_parallel_connections(vm: VM) -> None:
    async def one(i: int) -> None:
        payload = b"".join(random_chunks(100 + i, 256 << 10))
        reader, writer = await hybrid_connect(vm, ECHO)

        async def send() -> None:
            writer.write(payload)
            await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        echoed = await reader.readexactly(len(payload))
        await sender
        assert echoed == payload, f"connection {i} got different bytes back"
        writer.close()

    await asyncio.gather(*(one(i) for i in range(64)))


@deadline(180)
async def test_abrupt_disconnects_leave_the_backend_working(vm: VM) -> None:
    # Host -> guest: vanish in the middle of a large upload.
    _, writer = await hybrid_connect(vm, SINK)
    for chunk in random_chunks(7, 8 * MB):
        writer.write(chunk)
    writer.transport.abort()
    # Guest -> host: vanish while the guest is still sending.
    reader, writer = await hybrid_connect(vm, SOURCE)
    writer.write(f"{50 * MB}\n".encode())
    await reader.readexactly(MB)
    writer.transport.abort()
    # Vanish before the guest even answered the CONNECT.
    _, writer = await asyncio.open_unix_connection(str(vm.hybrid_socket))
    writer.write(b"CONNECT 5000\n")
    writer.transport.abort()
    vm.check_running()
    check_source(await source(vm, 4 * MB), 4 * MB)
    payload = b"".join(random_chunks(8, 2 * MB))
    crc = zlib.crc32(payload)
    assert await sink(vm, [payload]) == (len(payload), crc)


@deadline(180)
async def test_guest_initiated_connection(vm: VM) -> None:
    port, size = 9000, 8 * MB
    received = asyncio.get_running_loop().create_future()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = bytearray()
        while block := await reader.read(MB):
            data += block
        received.set_result(bytes(data))
        writer.close()

    server = await asyncio.start_unix_server(accept, f"{vm.hybrid_socket}_{port}")
    try:
        reader, writer = await hybrid_connect(vm, DIAL)
        writer.write(f"{port} {size}\n".encode())
        assert await reader.readline() == b"DONE\n"
        check_source(await asyncio.wait_for(received, 60), size)
        writer.close()
    finally:
        server.close()
        os.unlink(f"{vm.hybrid_socket}_{port}")


@deadline(180)
async def test_guest_connection_to_unserved_port_is_refused(vm: VM) -> None:
    reader, writer = await hybrid_connect(vm, DIAL)
    writer.write(b"9001 10\n")
    # ECONNRESET (104): our back-end answered the guest's REQUEST with RST.
    assert await reader.readline() == b"ERR 104\n"
    writer.close()


@deadline(180)
async def test_virtiofs_shared_folder(vm: VM) -> None:
    assert vm.shared_dir is not None
    assert (vm.shared_dir / "guest-was-here").read_text() == "written by the guest\n"


def backend_log(vm: VM) -> str:
    return (vm.workdir / "vsock.log").read_text()


@deadline(180)
async def test_guest_device_reset_drops_connections_and_recovers(vm: VM) -> None:
    """Last on purpose: the guest rebinds its virtio-vsock driver, so QEMU stops the rings
    (GET_VRING_BASE) and sets the device up again (SET_MEM_TABLE, vrings, kicks)."""
    starts = backend_log(vm).count("guest vsock up")
    reader, writer = await hybrid_connect(vm, ECHO)
    control, control_writer = await hybrid_connect(vm, 5006)
    assert await control.readline() == b"OK\n"
    control_writer.close()
    assert await asyncio.wait_for(reader.read(), 60) == b"", "connection survived a reset"
    writer.close()
    await vm.wait_console("virtio-vsock device .* reset", within=60)
    await vm.wait_port(ECHO, within=60)
    assert backend_log(vm).count("guest vsock up") > starts
    reader, writer = await hybrid_connect(vm, ECHO)
    writer.write(b"after the reset\n")
    assert await reader.readline() == b"after the reset\n"
    writer.close()
