"""One vsock stream between a host unix socket and a guest port: state and credit.

Credit-based flow control (virtio spec 5.10.6.3): each side advertises ``buf_alloc`` (its
receive buffer) and ``fwd_cnt`` (bytes it has consumed). A sender may have at most
``peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`` bytes in flight. Counters wrap at 2**32.
"""

from __future__ import annotations

from collections import deque
from enum import Enum, auto

U32 = 0xFFFFFFFF


class State(Enum):
    CONNECTING = auto()  # host asked (REQUEST sent), waiting for the guest's RESPONSE
    ACCEPTING = auto()  # guest asked, the host unix socket is being connected
    ESTABLISHED = auto()
    CLOSING = auto()  # the host side is gone, waiting for the guest's RST


class Connection:
    """Byte accounting for both directions of one connection.

    ``local_port`` is the host side's port, ``peer_port`` the guest's. Bytes towards the
    guest wait in ``pending`` until the guest has credit and rx buffers for them.
    """

    def __init__(self, local_port: int, peer_port: int, state: State, buf_alloc: int) -> None:
        self.local_port = local_port
        self.peer_port = peer_port
        self.state = state
        self.buf_alloc = buf_alloc
        self.rx_cnt = 0  # bytes received from the guest
        self.reported_fwd = 0  # the fwd_cnt the guest last heard from us
        self.peer_buf_alloc = 0
        self.peer_fwd_cnt = 0
        self.tx_cnt = 0  # bytes sent to the guest
        self.pending: deque[memoryview] = deque()
        self.pending_bytes = 0
        self.shutdown_after_drain = 0  # SHUTDOWN flags to send once pending is empty
        self.scheduled = False  # sitting in the muxer's ready queue

    @property
    def key(self) -> tuple[int, int]:
        return (self.local_port, self.peer_port)

    def peer_credit(self) -> int:
        """How many more bytes the guest can take now."""
        in_flight = (self.tx_cnt - self.peer_fwd_cnt) & U32
        return max(0, self.peer_buf_alloc - in_flight)

    def update_peer(self, buf_alloc: int, fwd_cnt: int) -> None:
        self.peer_buf_alloc = buf_alloc
        self.peer_fwd_cnt = fwd_cnt

    def fwd_cnt(self, host_buffered: int) -> int:
        """Bytes consumed: received minus what still waits in the host socket's buffer."""
        return (self.rx_cnt - host_buffered) & U32

    def report(self, host_buffered: int) -> tuple[int, int]:
        """``(buf_alloc, fwd_cnt)`` for an outgoing header; remembers what was said."""
        self.reported_fwd = self.fwd_cnt(host_buffered)
        return self.buf_alloc, self.reported_fwd

    def window(self) -> int:
        """How much the guest keeps in flight towards us at most.

        Linux caps its TX credit at its own buffer size too (the ``buf_alloc`` it
        advertises), so the smaller of the two buffers is the real window.
        """
        return min(self.buf_alloc, self.peer_buf_alloc) if self.peer_buf_alloc else self.buf_alloc

    def needs_credit_update(self, host_buffered: int) -> bool:
        """True once the guest's view of our consumption lags by a quarter of the window.

        Together with a host write-buffer high mark of half the window (see the muxer)
        this guarantees a guest that ran out of credit hears from us again.
        """
        return (self.fwd_cnt(host_buffered) - self.reported_fwd) & U32 >= self.window() // 4

    def received(self, n: int) -> None:
        self.rx_cnt = (self.rx_cnt + n) & U32

    def queue(self, data: bytes | memoryview) -> None:
        if data:
            self.pending.append(memoryview(data))
            self.pending_bytes += len(data)

    def sendable(self) -> bool:
        return self.state is State.ESTABLISHED and self.pending_bytes > 0 and self.peer_credit() > 0

    def take(self, limit: int) -> memoryview:
        """Up to ``limit`` pending bytes (within credit), counted as sent."""
        n = min(limit, self.peer_credit())
        first = self.pending[0]
        if n >= len(first):
            self.pending.popleft()
            chunk = first
        else:
            chunk = first[:n]
            self.pending[0] = first[n:]
        self.pending_bytes -= len(chunk)
        self.tx_cnt = (self.tx_cnt + len(chunk)) & U32
        return chunk

    def drop_pending(self) -> None:
        self.pending.clear()
        self.pending_bytes = 0
