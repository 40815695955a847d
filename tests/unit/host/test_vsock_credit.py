"""Credit accounting of one vsock connection (virtio spec 5.10.6.3), counters wrapping."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pykata.host.vsock.connection import U32, Connection, State


def established(buf_alloc: int = 1 << 20) -> Connection:
    return Connection(1 << 30, 1024, State.ESTABLISHED, buf_alloc)


def test_nothing_is_sent_before_the_guest_announces_its_buffer() -> None:
    conn = established()
    conn.queue(b"data")
    assert conn.peer_credit() == 0 and not conn.sendable()


def test_take_stays_within_credit_and_counts_tx() -> None:
    conn = established()
    conn.update_peer(buf_alloc=10, fwd_cnt=0)
    conn.queue(b"0123456789abcdef")
    assert bytes(conn.take(4096)) == b"0123456789"
    assert conn.tx_cnt == 10 and conn.peer_credit() == 0 and not conn.sendable()
    conn.update_peer(buf_alloc=10, fwd_cnt=6)
    assert bytes(conn.take(4096)) == b"abcdef"
    assert conn.pending_bytes == 0


def test_take_splits_on_the_packet_limit() -> None:
    conn = established()
    conn.update_peer(1 << 20, 0)
    conn.queue(b"a" * 5000)
    conn.queue(b"b" * 10)
    assert [len(conn.take(4096)) for _ in range(3)] == [4096, 904, 10]


@given(st.integers(0, U32), st.integers(1, 1 << 20), st.integers(0, 1 << 20))
def test_credit_survives_counter_wraparound(start: int, buf_alloc: int, in_flight: int) -> None:
    conn = established()
    conn.tx_cnt = (start + in_flight) & U32
    conn.update_peer(buf_alloc, start)
    assert conn.peer_credit() == max(0, buf_alloc - in_flight)


@given(st.integers(0, U32), st.integers(0, 1 << 20), st.integers(0, 1 << 20))
def test_fwd_cnt_excludes_bytes_still_buffered(rx: int, got: int, buffered: int) -> None:
    conn = established()
    conn.rx_cnt = rx
    conn.received(got)
    buffered = min(buffered, got)
    assert conn.fwd_cnt(buffered) == (rx + got - buffered) & U32


def test_window_is_the_smaller_buffer() -> None:
    conn = established(buf_alloc=1 << 20)
    assert conn.window() == 1 << 20
    conn.update_peer(256 << 10, 0)
    assert conn.window() == 256 << 10


def test_credit_update_due_after_a_quarter_window_is_consumed() -> None:
    conn = established(buf_alloc=1 << 20)
    conn.update_peer(256 << 10, 0)
    conn.received(64 << 10)
    assert not conn.needs_credit_update(host_buffered=1)
    assert conn.needs_credit_update(host_buffered=0)
    assert conn.report(0) == (1 << 20, 64 << 10)
    assert not conn.needs_credit_update(0)
