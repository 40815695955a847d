"""The ttRPC frame codec: a 10-byte big-endian header followed by a protobuf payload.

Header: u32 payload length, u32 stream id, u8 message type, u8 flags. The decoder is
sans-IO (bytes in, frames out) so the server and client protocols feed it straight from
``data_received`` and tests can drive it with any split of the byte stream.
"""

from __future__ import annotations

import asyncio
import struct
from enum import Enum, IntEnum, IntFlag

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


class Refused(Enum):
    """Why a frame's payload was discarded instead of delivered."""

    OVERSIZED = "over the payload size limit"
    OVER_BUDGET = "over the receive buffer budget"


# (stream id, type, flags, payload). The payload is a Refused for a frame whose bytes were
# discarded. A plain tuple: one is built per message on the hot path.
Frame = tuple[int, int, int, bytes | Refused]

# Payloads up to this size are never refused for the budget (see ByteBudget).
EXEMPT_PAYLOAD = 4 << 10


class ByteBudget:
    """Bytes of frame payload a server may hold at once, shared by all its connections.

    A frame longer than ``exempt`` reserves its whole payload length when its header is
    parsed, before any of its body is buffered; if the reservation does not fit, the frame
    is refused (its body discarded as it arrives). Nobody ever waits for the budget, so it
    cannot deadlock, and small frames (control RPCs) are served even when it is exhausted.
    Whoever receives a delivered frame longer than ``exempt`` owns its reservation and gives
    it back with ``release(len(payload))``.
    """

    def __init__(self, limit: int, exempt: int = EXEMPT_PAYLOAD) -> None:
        if limit < 0 or exempt < 0:
            raise ValueError("budget sizes must not be negative")
        self.limit = limit
        self.exempt = exempt
        self.in_use = 0

    def reserve(self, size: int) -> bool:
        if self.in_use + size > self.limit:
            return False
        self.in_use += size
        return True

    def release(self, size: int) -> None:
        self.in_use -= size
        assert self.in_use >= 0, "budget released more than was reserved"


def varint_size(value: int) -> int:
    """Bytes of ``value`` as a protobuf varint."""
    return max(1, (value.bit_length() + 6) // 7)


def max_field_content(room: int) -> int:
    """The longest bytes value whose length-delimited protobuf field (one-byte tag, field
    numbers 1 to 15) fits in ``room`` bytes."""
    size = room - 2
    while size > 0 and 1 + varint_size(size) + size > room:
        size -= 1
    return max(size, 0)


def encode_frame(stream_id: int, frame_type: int, payload: bytes, flags: int = 0) -> bytes:
    """One frame as bytes; raises ValueError for a payload over MAX_PAYLOAD."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(len(payload), stream_id, frame_type, flags) + payload


class FrameDecoder:
    """Splits a byte stream into frames; oversized payloads are skipped, not buffered, and
    reported once skipped.

    With a ``budget``, a frame over ``budget.exempt`` is delivered only if its payload could
    be reserved from the budget, else skipped like an oversized one but reported as soon as
    its header is read (``Refused.OVER_BUDGET``).
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD, budget: ByteBudget | None = None) -> None:
        self._max = max_payload
        self._budget = budget
        # Reserved for the partial frame being buffered; handed over with the frame.
        self._reserved = 0
        self._buf = bytearray()
        # Bytes the buffered partial frame needs before it is worth parsing again, so a
        # large frame arriving in many chunks is not re-examined (and copied) per chunk.
        self._need = 0
        self._discard = 0
        self._skipped: Frame | None = None

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held (or still to discard); non-zero at EOF means
        the peer closed mid-frame."""
        return len(self._buf) + self._discard

    @property
    def held(self) -> int:
        """Bytes of an incomplete frame held in memory."""
        return len(self._buf)

    def close(self) -> None:
        """Drop the partial frame and give back its reservation (the connection is gone)."""
        self._buf.clear()
        self._discard = 0
        self._skipped = None
        if self._reserved and self._budget is not None:
            self._budget.release(self._reserved)
        self._reserved = 0

    def partial(self) -> bytes:
        """The bytes of the incomplete frame held (for another process taking the connection
        over, which feeds them first). ValueError while an oversized or refused frame is
        being skipped: that cannot be handed over."""
        if self._discard:
            raise ValueError("a refused frame is still being skipped")
        return bytes(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        if self._discard:
            if len(data) < self._discard:
                self._discard -= len(data)
                return frames
            data = data[self._discard :]
            self._discard = 0
            if self._skipped is not None:
                frames.append(self._skipped)
                self._skipped = None
        buf = self._buf
        if buf:
            buf += data
            if len(buf) < self._need:
                return frames
            data = bytes(buf)
            buf.clear()
            # The frame the buffer held was reserved (if it needed to be) when its header
            # was parsed: the loop below must not reserve it again.
            reserved = self._reserved
            self._reserved = 0
        else:
            reserved = 0
        unpack = HEADER.unpack_from
        limit = self._max
        budget = self._budget
        exempt = min(budget.exempt, limit) if budget is not None else limit
        pos = 0
        end = len(data)
        while end - pos >= HEADER_SIZE:
            length, stream_id, frame_type, flags = unpack(data, pos)
            start = pos + HEADER_SIZE
            stop = start + length
            if length > exempt and not reserved:
                refusal = None
                if length > limit:
                    refusal = Refused.OVERSIZED
                elif budget is not None and not budget.reserve(length):
                    refusal = Refused.OVER_BUDGET
                if refusal is not None:
                    if stop <= end:
                        frames.append((stream_id, frame_type, flags, refusal))
                        pos = stop
                        continue
                    self._discard = stop - end
                    if refusal is Refused.OVER_BUDGET:
                        # Answered now: the peer need not send the rest to hear why.
                        frames.append((stream_id, frame_type, flags, refusal))
                    else:
                        self._skipped = (stream_id, frame_type, flags, refusal)
                    return frames
                reserved = length
            if stop > end:
                self._need = stop - pos
                self._reserved = reserved
                break
            frames.append((stream_id, frame_type, flags, data[start:stop]))
            reserved = 0
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

    @property
    def queued(self) -> bool:
        return bool(self._queue)

    def _flush(self) -> None:
        if not self._queue:
            return  # flushed early (flush()) in the iteration it was queued
        data = b"".join(self._queue)
        self._queue.clear()
        if not self._transport.is_closing():
            self._transport.write(data)
