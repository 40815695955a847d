"""The frame codec: headers, splits at every offset, truncation and oversize."""

from __future__ import annotations

import asyncio
import socket

import pytest

from pykata.ttrpc.framing import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    FrameDecoder,
    FrameType,
    FrameWriter,
    Refused,
    encode_frame,
)


def test_header_layout_is_big_endian() -> None:
    data = encode_frame(0x01020304, FrameType.RESPONSE, b"xy", flags=0x05)
    assert data == b"\x00\x00\x00\x02" + b"\x01\x02\x03\x04" + b"\x02" + b"\x05" + b"xy"
    assert HEADER_SIZE == 10
    assert MAX_PAYLOAD == 4 * 1024 * 1024


def test_round_trip_several_frames_in_one_chunk() -> None:
    frames = [(1, 1, 0, b"a"), (3, 2, 4, b""), (0xFFFFFFFF, 3, 0xFF, b"z" * 300)]
    data = b"".join(encode_frame(*f[:2], f[3], f[2]) for f in frames)
    assert FrameDecoder().feed(data) == frames


def test_every_split_point_gives_the_same_frames() -> None:
    frames = [(1, 1, 0, b"hello"), (3, 1, 0, b""), (5, 1, 2, bytes(range(200)))]
    data = b"".join(encode_frame(f[0], f[1], f[3], f[2]) for f in frames)
    for cut in range(len(data) + 1):
        decoder = FrameDecoder()
        assert decoder.feed(data[:cut]) + decoder.feed(data[cut:]) == frames
        assert decoder.buffered == 0


def test_byte_by_byte() -> None:
    data = encode_frame(7, 1, b"payload") * 3
    decoder = FrameDecoder()
    out = [f for i in range(len(data)) for f in decoder.feed(data[i : i + 1])]
    assert out == [(7, 1, 0, b"payload")] * 3


@pytest.mark.parametrize("size", [0, 1, 5, 9])
def test_truncated_header_waits_and_reports_buffered(size: int) -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(1, 1, b"abc")[:size]) == []
    assert decoder.buffered == size


def test_truncated_payload_waits_for_the_rest() -> None:
    data = encode_frame(1, 1, b"0123456789")
    decoder = FrameDecoder()
    assert decoder.feed(data[:15]) == []
    assert decoder.buffered == 15
    assert decoder.feed(data[15:]) == [(1, 1, 0, b"0123456789")]
    assert decoder.buffered == 0


def test_payload_at_the_limit_is_accepted() -> None:
    payload = b"\x01" * MAX_PAYLOAD
    data = encode_frame(1, 1, payload)
    decoder = FrameDecoder()
    out = []
    for i in range(0, len(data), 65536):
        out += decoder.feed(data[i : i + 65536])
    assert out == [(1, 1, 0, payload)]


def test_oversized_payload_is_discarded_and_reported_once_skipped() -> None:
    limit = 16
    oversized = (limit + 1).to_bytes(4, "big") + (9).to_bytes(4, "big") + b"\x01\x00"
    follow = encode_frame(11, 1, b"ok")
    decoder = FrameDecoder(max_payload=limit)
    assert decoder.feed(oversized + b"x" * 10) == []
    assert decoder.buffered == limit + 1 - 10
    assert decoder.feed(b"x" * 7 + follow) == [(9, 1, 0, Refused.OVERSIZED), (11, 1, 0, b"ok")]
    assert decoder.buffered == 0


def test_oversized_frame_complete_in_one_chunk() -> None:
    data = (17).to_bytes(4, "big") + (3).to_bytes(4, "big") + b"\x01\x00" + b"y" * 17
    assert FrameDecoder(max_payload=16).feed(data + encode_frame(5, 1, b"")) == [
        (3, 1, 0, Refused.OVERSIZED),
        (5, 1, 0, b""),
    ]


def test_huge_length_never_buffers_the_payload() -> None:
    decoder = FrameDecoder()
    data = (0xFFFFFFFF).to_bytes(4, "big") + (1).to_bytes(4, "big") + b"\x01\x00"
    assert decoder.feed(data + b"\x00" * 100_000) == []
    assert decoder.buffered == 0xFFFFFFFF - 100_000


def test_encode_refuses_oversized_payload() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        encode_frame(1, 1, b"\x00" * (MAX_PAYLOAD + 1))


async def test_writer_delivers_frames_in_order_over_a_socket() -> None:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    transport, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
    reader, peer = await asyncio.open_connection(sock=theirs)
    writer = FrameWriter(transport, loop)
    for stream_id in (1, 3, 5):
        writer.write(stream_id, FrameType.RESPONSE, b"r%d" % stream_id)
    expected = b"".join(encode_frame(s, 2, b"r%d" % s) for s in (1, 3, 5))
    assert await asyncio.wait_for(reader.readexactly(len(expected)), 5) == expected
    transport.close()
    # A response finishing after the connection closed is dropped, not an error.
    writer.write(7, FrameType.RESPONSE, b"late")
    await asyncio.sleep(0)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    peer.close()
