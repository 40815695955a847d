"""Byte streams through the back-end stay exact under credit pressure (property tests).

The test guest behaves like Linux: it consumes what arrives and returns credit, and sends
no more than min(host buffer, its own buffer) in flight, in packets of at most 64 KiB; the
host client writes and reads in random sizes at random speeds.
"""

from __future__ import annotations

import asyncio
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vsock_guest import Rig, open_rig

from pykata.host.vsock.packet import SHUTDOWN_SEND, Op

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EXAMPLE_DEADLINE = 15.0  # a stall fails the example (a whole run takes ~5 s)
guest_buffers = st.sampled_from([4096, 16 << 10, 64 << 10, 256 << 10])


@SETTINGS
@given(
    chunks=st.lists(st.integers(1, 200_000), min_size=1, max_size=10),
    guest_buf=guest_buffers,
    seed=st.integers(0, 2**32 - 1),
)
def test_host_to_guest_is_exact_and_within_credit(
    chunks: list[int], guest_buf: int, seed: int
) -> None:
    asyncio.run(asyncio.wait_for(host_to_guest(chunks, guest_buf, seed), EXAMPLE_DEADLINE))


async def host_to_guest(chunks: list[int], guest_buf: int, seed: int) -> None:
    data = random.Random(seed).randbytes(sum(chunks))
    async with open_rig() as rig:
        _, writer, req = await rig.connected(buf_alloc=guest_buf)

        async def produce() -> None:
            offset = 0
            for size in chunks:
                writer.write(data[offset : offset + size])
                offset += size
                await writer.drain()
            writer.write_eof()

        producer = asyncio.create_task(produce())
        got = bytearray()
        credited = 0  # the fwd_cnt we last gave the host
        d = rig.driver
        while True:
            packets = d.receive()
            for hdr, payload in packets:
                if hdr.op == Op.RW:
                    got += payload
                    assert len(got) - credited <= guest_buf, "host overran the guest's credit"
            if any(h.op == Op.SHUTDOWN for h, _ in packets):
                break
            if packets:
                credited = len(got)
                d.send(d.packet(Op.CREDIT_UPDATE, 5000, req.src_port, buf_alloc=guest_buf,
                                fwd_cnt=credited))  # fmt: skip
            await asyncio.sleep(0.001)
        await producer
        assert got == data
        writer.close()


@SETTINGS
@given(
    chunks=st.lists(st.integers(1, 150_000), min_size=1, max_size=10),
    reads=st.lists(st.integers(256, 100_000), min_size=1, max_size=10),
    guest_buf=guest_buffers,
    seed=st.integers(0, 2**32 - 1),
)
def test_guest_to_host_is_exact_with_a_slow_reader(
    chunks: list[int], reads: list[int], guest_buf: int, seed: int
) -> None:
    asyncio.run(asyncio.wait_for(guest_to_host(chunks, reads, guest_buf, seed), EXAMPLE_DEADLINE))


async def guest_to_host(chunks: list[int], reads: list[int], guest_buf: int, seed: int) -> None:
    data = random.Random(seed).randbytes(sum(chunks))
    async with open_rig() as rig:
        reader, writer, req = await rig.connected(buf_alloc=guest_buf)

        async def consume() -> bytes:
            got = bytearray()
            n = 0
            while block := await reader.read(reads[n % len(reads)]):
                got += block
                n += 1
                if n % 4 == 0:  # now and then a slow reader: the host buffer fills up
                    await asyncio.sleep(0.001)
            return bytes(got)

        consumer = asyncio.create_task(consume())
        await guest_sends(rig, req.src_port, data, chunks, window=min(req.buf_alloc, guest_buf))
        assert await consumer == data
        writer.close()


async def guest_sends(
    rig: Rig, host_port: int, data: bytes, chunks: list[int], window: int
) -> None:
    d = rig.driver
    sent = fwd = 0
    pieces = [data[sum(chunks[:i]) : sum(chunks[: i + 1])] for i in range(len(chunks))]
    while pieces:
        for hdr, _ in d.receive():
            if hdr.op == Op.CREDIT_UPDATE or hdr.op == Op.RW:
                fwd = hdr.fwd_cnt
        credit = window - (sent - fwd)
        if credit <= 0:
            await asyncio.sleep(0.001)
            continue
        piece = pieces.pop(0)
        part, rest = piece[: min(credit, 64 << 10)], piece[min(credit, 64 << 10) :]
        if rest:
            pieces.insert(0, rest)
        d.send(d.packet(Op.RW, 5000, host_port, buf_alloc=window), part)
        sent += len(part)
        await d.sent()
    d.send(d.packet(Op.SHUTDOWN, 5000, host_port, flags=SHUTDOWN_SEND))
    await d.sent()
