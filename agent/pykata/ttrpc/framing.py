"""The ttRPC frame codec: a 10-byte big-endian header followed by a protobuf payload.

Header: u32 payload length, u32 stream id, u8 message type, u8 flags. The decoder is
sans-IO (bytes in, frames out) so the server and client protocols feed it straight from
``data_received`` and tests can drive it with any split of the byte stream.
"""

from __future__ import annotations

import asyncio
import struct
from enum import IntEnum, IntFlag

HEADER = struct.Struct(">IIBB")
HEADER_SIZE = HEADER.size
MAX_PAYLOAD = 4 << 20


class FrameType(IntEnum):
    REQUEST = 1
    RESPONSE = 2
    DATA = 3


class Flag(IntFlag):
    REMOTE_CLOSED = 1
    REMOTE_OPEN = 2
    NO_DATA = 4


# (stream id, type, flags, payload). The payload is None for a frame over the size limit,
# whose bytes were discarded. A plain tuple: one is built per message on the hot path.
Frame = tuple[int, int, int, bytes | None]


def encode_frame(stream_id: int, frame_type: int, payload: bytes, flags: int = 0) -> bytes:
    """One frame as bytes; raises ValueError for a payload over MAX_PAYLOAD."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(len(payload), stream_id, frame_type, flags) + payload


class FrameDecoder:
    """Splits a byte stream into frames; oversized payloads are skipped, not buffered."""

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self._max = max_payload
        self._buf = bytearray()
        # Bytes the buffered partial frame needs before it is worth parsing again, so a
        # large frame arriving in many chunks is not re-examined (and copied) per chunk.
        self._need = 0
        self._discard = 0
        self._oversized: Frame | None = None

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held (or still to discard); non-zero at EOF means
        the peer closed mid-frame."""
        return len(self._buf) + self._discard

    def feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        if self._discard:
            if len(data) < self._discard:
                self._discard -= len(data)
                return frames
            data = data[self._discard :]
            self._discard = 0
            assert self._oversized is not None
            frames.append(self._oversized)
            self._oversized = None
        buf = self._buf
        if buf:
            buf += data
            if len(buf) < self._need:
                return frames
            data = bytes(buf)
            buf.clear()
        unpack = HEADER.unpack_from
        limit = self._max
        pos = 0
        end = len(data)
        while end - pos >= HEADER_SIZE:
            length, stream_id, frame_type, flags = unpack(data, pos)
            start = pos + HEADER_SIZE
            stop = start + length
            if length > limit:
                if stop <= end:
                    frames.append((stream_id, frame_type, flags, None))
                    pos = stop
                    continue
                self._discard = stop - end
                self._oversized = (stream_id, frame_type, flags, None)
                return frames
            if stop > end:
                self._need = stop - pos
                break
            frames.append((stream_id, frame_type, flags, data[start:stop]))
            pos = stop
        else:
            self._need = HEADER_SIZE
        if pos < end:
            buf += memoryview(data)[pos:]
        return frames


class FrameWriter:
    """Queues frames for a transport and writes each loop iteration's frames at once.

    Handlers finishing in the same iteration (the common case under concurrency) then
    cost one send() system call together instead of one each.
    """

    def __init__(self, transport: asyncio.WriteTransport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._queue: list[bytes] = []

    def write(self, stream_id: int, frame_type: int, payload: bytes) -> None:
        queue = self._queue
        if not queue:
            self._loop.call_soon(self._flush)
        queue.append(HEADER.pack(len(payload), stream_id, frame_type, 0))
        queue.append(payload)

    def _flush(self) -> None:
        data = b"".join(self._queue)
        self._queue.clear()
        if not self._transport.is_closing():
            self._transport.write(data)
