"""Process output buffering and EOF, stdin writes and close, pipe sizes."""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty

import pytest

from pykata.agent.process.stdio import HIGH_WATER, InputStream, OutputStream, set_pipe_size


async def read_all(stream: OutputStream, size: int = 65536) -> bytes:
    chunks = []
    while chunk := await stream.read(size):
        chunks.append(chunk)
    return b"".join(chunks)


async def test_reads_are_bounded_and_eof_is_empty() -> None:
    r, w = os.pipe2(os.O_CLOEXEC)
    stream = OutputStream(r)
    os.write(w, b"0123456789")
    os.close(w)
    assert await stream.read(4) == b"0123"
    assert await read_all(stream) == b"456789"
    assert await stream.read(4) == b""
    stream.close()


async def test_a_stream_being_read_is_drained_only_once_its_reader_saw_eof() -> None:
    r, w = os.pipe2(os.O_CLOEXEC)
    stream = OutputStream(r)
    os.write(w, b"last")
    os.close(w)
    assert await stream.read(4) == b"last"
    await stream.finish()
    # Everything is read and EOF is reached, but the reader has not been told: releasing the
    # process now would turn its next read into NOT_FOUND instead of EOF.
    assert not stream.drained
    assert await stream.read(4) == b""
    assert stream.drained
    stream.close()


async def test_a_stream_nobody_reads_is_drained_at_eof() -> None:
    r, w = os.pipe2(os.O_CLOEXEC)
    stream = OutputStream(r)
    os.close(w)
    await stream.finish()
    assert stream.drained
    stream.close()


async def test_exit_reports_eof_although_a_grandchild_keeps_the_pipe() -> None:
    r, w = os.pipe2(os.O_CLOEXEC)
    stream = OutputStream(r)
    os.write(w, b"last words")
    # w stays open (a grandchild holding it); the process exit is what ends the stream.
    await stream.finish()
    assert await read_all(stream) == b"last words"
    os.close(w)
    stream.close()


async def test_output_beyond_high_water_is_kept_until_read() -> None:
    r, w = os.pipe2(os.O_CLOEXEC)
    set_pipe_size(w, 1 << 20)
    stream = OutputStream(r)
    data = os.urandom(HIGH_WATER + (3 << 20))
    writer = asyncio.ensure_future(asyncio.to_thread(os.write, w, data))
    received = bytearray()
    while len(received) < HIGH_WATER:
        received += await stream.read(1 << 16)
    written = await writer
    os.close(w)
    received += await read_all(stream)
    assert written == len(data)
    assert bytes(received) == data
    stream.close()


async def test_pty_output_after_exit_is_not_lost() -> None:
    master, slave = pty.openpty()
    stream = OutputStream(master)
    os.write(slave, b"bye\n")
    os.close(slave)
    await stream.finish(grace=1.0)
    assert await read_all(stream) == b"bye\r\n"
    stream.close()


async def test_stdin_write_then_close_gives_reader_eof() -> None:
    r, w = os.pipe2(os.O_CLOEXEC)
    stdin = InputStream(w)
    payload = os.urandom(1 << 20)  # larger than the pipe: the write must wait for the reader
    reader = asyncio.ensure_future(asyncio.to_thread(lambda: os.fdopen(r, "rb").read()))
    assert await stdin.write(payload) == len(payload)
    await stdin.close()
    assert await reader == payload
    with pytest.raises(BrokenPipeError):
        await stdin.write(b"more")


async def test_pty_stdin_close_sends_eof_character() -> None:
    master, slave = pty.openpty()
    stdin = InputStream(master, owns_fd=False, tty=True)
    await stdin.write(b"abc")
    await stdin.close()
    os.set_blocking(slave, False)
    await asyncio.sleep(0.05)
    # Canonical mode: VEOF ends the line without a newline.
    assert os.read(slave, 100) == b"abc"
    os.close(slave)
    os.close(master)


def test_set_pipe_size() -> None:
    r, w = os.pipe()
    set_pipe_size(w, 1 << 18)
    assert fcntl.fcntl(r, fcntl.F_GETPIPE_SZ) == 1 << 18
    set_pipe_size(w, 0)  # 0: the kernel's default is kept
    assert fcntl.fcntl(r, fcntl.F_GETPIPE_SZ) == 1 << 18
    os.close(r)
    os.close(w)
