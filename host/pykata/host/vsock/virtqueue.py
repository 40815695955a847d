"""Split virtqueues (virtio spec 2.7) read and written in place in the guest's memory.

The front-end (QEMU) shares guest RAM as memfd regions; we map each one and reach
descriptors, buffers and rings as memoryview slices of those mappings, so payload bytes are
copied once between guest memory and the host socket and never per byte in Python.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import threading
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

DESC = struct.Struct("<QIHH")  # addr, len, flags, next
U16 = struct.Struct("<H")
USED_ELEM = struct.Struct("<II")  # id, len

DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
AVAIL_F_NO_INTERRUPT = 1
_FENCE = threading.Lock()


class GuestMemoryError(Exception):
    """The guest (or front-end) handed us an address or ring that does not fit its memory."""


@dataclass(slots=True)
class MemoryRegion:
    guest_addr: int
    size: int
    user_addr: int  # the front-end's virtual address of the region (used by vring addresses)
    mmap_offset: int


@dataclass
class _Mapping:
    region: MemoryRegion
    mapping: mmap.mmap
    view: memoryview


class GuestMemory:
    """The guest RAM regions of one SET_MEM_TABLE, mapped into this process."""

    def __init__(self, regions: list[tuple[MemoryRegion, int]]) -> None:
        """Map each ``(region, fd)``; the fds stay owned by the caller."""
        self._maps: list[_Mapping] = []
        try:
            for region, fd in regions:
                mapping = mmap.mmap(fd, region.mmap_offset + region.size, mmap.MAP_SHARED)
                view = memoryview(mapping)[region.mmap_offset :]
                self._maps.append(_Mapping(region, mapping, view))
        except BaseException:
            self.close()
            raise

    @property
    def regions(self) -> list[MemoryRegion]:
        return [m.region for m in self._maps]

    def guest(self, addr: int, length: int) -> memoryview:
        """A writable view of ``length`` bytes at guest physical address ``addr``."""
        for m in self._maps:
            start = addr - m.region.guest_addr
            if start >= 0 and start + length <= m.region.size:
                return m.view[start : start + length]
        raise GuestMemoryError(f"guest range {addr:#x}+{length:#x} is outside guest memory")

    def user(self, addr: int, length: int) -> memoryview:
        """A view of ``length`` bytes at the front-end's virtual address ``addr``."""
        for m in self._maps:
            start = addr - m.region.user_addr
            if start >= 0 and start + length <= m.region.size:
                return m.view[start : start + length]
        raise GuestMemoryError(f"front-end range {addr:#x}+{length:#x} is outside guest memory")

    def close(self) -> None:
        for m in self._maps:
            # Views handed out earlier may still be alive; the mapping then goes with them.
            try:
                m.view.release()
                m.mapping.close()
            except BufferError:
                log.debug("guest memory still referenced; unmapped when released")
        self._maps.clear()


@dataclass(slots=True)
class Chain:
    """One descriptor chain taken from the available ring."""

    head: int
    readable: list[memoryview] = field(default_factory=list)
    writable: list[memoryview] = field(default_factory=list)

    def readable_size(self) -> int:
        return sum(len(b) for b in self.readable)

    def writable_size(self) -> int:
        return sum(len(b) for b in self.writable)


@dataclass(slots=True)
class RingAddresses:
    desc: int
    used: int
    avail: int


class Virtqueue:
    """The device side of one split virtqueue."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.num = 0
        self.addresses: RingAddresses | None = None
        self.last_avail = 0  # set by SET_VRING_BASE, reported by GET_VRING_BASE
        self.kick_fd: int | None = None
        self.call_fd: int | None = None
        self.enabled = True
        self._desc: memoryview | None = None
        self._avail: memoryview | None = None
        self._used: memoryview | None = None
        self._used_idx = 0
        self._avail_idx = 0
        self._pending_notify = False

    @property
    def ready(self) -> bool:
        return self._desc is not None and self.enabled

    def start(self, memory: GuestMemory) -> None:
        """Map the rings; called once size, addresses, base and kick fd are known."""
        if self.addresses is None or self.num == 0:
            raise GuestMemoryError(f"vring {self.index} started before its size and addresses")
        n = self.num
        self._desc = memory.user(self.addresses.desc, 16 * n)
        self._avail = memory.user(self.addresses.avail, 6 + 2 * n)
        self._used = memory.user(self.addresses.used, 6 + 8 * n)
        # The used index continues where the guest expects it (the ring may be restarted).
        self._used_idx = U16.unpack_from(self._used, 2)[0]
        self._avail_idx = self.last_avail

    def stop(self) -> None:
        self._desc = self._avail = self._used = None
        self._pending_notify = False

    def close_fds(self) -> None:
        for fd in (self.kick_fd, self.call_fd):
            if fd is not None:
                os.close(fd)
        self.kick_fd = self.call_fd = None

    def pop(self, memory: GuestMemory) -> Chain | None:
        """Take the next available chain, or None when the guest has offered nothing more."""
        avail = self._avail
        desc = self._desc
        if avail is None or desc is None:
            return None
        if self.last_avail == self._avail_idx:
            self._avail_idx = U16.unpack_from(avail, 2)[0]
            if self.last_avail == self._avail_idx:
                return None
        n = self.num
        head = U16.unpack_from(avail, 4 + 2 * (self.last_avail % n))[0]
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        chain = Chain(head)
        index = head
        for _ in range(n):
            if index >= n:
                raise GuestMemoryError(f"vring {self.index}: descriptor {index} out of range")
            addr, length, flags, nxt = DESC.unpack_from(desc, 16 * index)
            if flags & DESC_F_INDIRECT:
                raise GuestMemoryError(f"vring {self.index}: indirect descriptors not offered")
            buf = memory.guest(addr, length)
            (chain.writable if flags & DESC_F_WRITE else chain.readable).append(buf)
            if not flags & DESC_F_NEXT:
                return chain
            index = nxt
        raise GuestMemoryError(f"vring {self.index}: descriptor chain loops")

    def push(self, chain: Chain, written: int) -> None:
        """Return a chain to the guest with ``written`` bytes filled in."""
        used = self._used
        if used is None:
            return
        USED_ELEM.pack_into(used, 4 + 8 * (self._used_idx % self.num), chain.head, written)
        self._used_idx = (self._used_idx + 1) & 0xFFFF
        # x86 keeps stores in order, so the element is visible before the new index.
        U16.pack_into(used, 2, self._used_idx)
        self._pending_notify = True

    def notify(self) -> None:
        """Interrupt the guest once for everything pushed since the last call."""
        if not self._pending_notify or self._avail is None:
            return
        self._pending_notify = False
        # The used index must be visible before we read the guest's flag, or both sides can
        # miss each other's update (x86 lets a load pass an earlier store): a lock round
        # trip is a locked instruction, i.e. a full barrier.
        with _FENCE:
            pass
        suppressed = U16.unpack_from(self._avail, 0)[0] & AVAIL_F_NO_INTERRUPT
        if self.call_fd is not None and not suppressed:
            os.eventfd_write(self.call_fd, 1)
