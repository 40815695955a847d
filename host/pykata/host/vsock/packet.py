"""The virtio-vsock packet header (virtio spec 5.10.6) and its constants."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

# src_cid, dst_cid, src_port, dst_port, len, type, op, flags, buf_alloc, fwd_cnt
HEADER = struct.Struct("<QQIIIHHIII")
HEADER_SIZE = HEADER.size

HOST_CID = 2
TYPE_STREAM = 1

SHUTDOWN_RCV = 1
SHUTDOWN_SEND = 2
SHUTDOWN_BOTH = SHUTDOWN_RCV | SHUTDOWN_SEND


class Op(IntEnum):
    INVALID = 0
    REQUEST = 1
    RESPONSE = 2
    RST = 3
    SHUTDOWN = 4
    RW = 5
    CREDIT_UPDATE = 6
    CREDIT_REQUEST = 7


@dataclass(slots=True)
class Header:
    src_cid: int
    dst_cid: int
    src_port: int
    dst_port: int
    len: int
    type: int
    op: int
    flags: int
    buf_alloc: int
    fwd_cnt: int

    @classmethod
    def unpack_from(cls, buf: bytes | bytearray | memoryview, offset: int = 0) -> Header:
        if len(buf) - offset < HEADER_SIZE:
            raise ValueError(f"vsock header needs {HEADER_SIZE} bytes, got {len(buf) - offset}")
        return cls(*HEADER.unpack_from(buf, offset))

    def pack(self) -> bytes:
        return HEADER.pack(
            self.src_cid,
            self.dst_cid,
            self.src_port,
            self.dst_port,
            self.len,
            self.type,
            self.op,
            self.flags,
            self.buf_alloc,
            self.fwd_cnt,
        )
