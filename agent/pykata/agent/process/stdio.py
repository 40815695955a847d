"""A process's stdio as the agent holds it: pipes or a pty master, read and written on the loop.

Output is pulled from the kernel into a buffer as it comes so the process never stalls on a
full pipe while the host is slow to ask; ReadStdout takes from that buffer. Once the process
has exited, what is still in the pipe is drained and EOF reported, even if a grandchild keeps
the write end open.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import fcntl
import os
import socket
import struct
import termios
from typing import Any

from pykata.agent.fdready import readable, writable

# Stop pulling from the pipe above this much unread output: the pipe then fills and the
# process blocks, as it would without us in between.
HIGH_WATER = 4 << 20


def set_pipe_size(fd: int, size: int) -> None:
    if size > 0:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)


class OutputStream:
    """The agent's read end of a process's stdout/stderr pipe, or of its pty master."""

    def __init__(self, fd: int, *, owns_fd: bool = True) -> None:
        self._fd = fd
        self._owns_fd = owns_fd
        self._buffer = bytearray()
        self._eof = False
        self._closed = False
        self._reading = False
        # Whether a reader has asked for data, and whether one has been answered EOF.
        self._read_started = False
        self._eof_delivered = False
        self._limit: int | None = HIGH_WATER
        self._changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        os.set_blocking(fd, False)
        self._resume()

    def _resume(self) -> None:
        if not self._reading and not self._eof:
            self._loop.add_reader(self._fd, self._pull)
            self._reading = True

    def _pause(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def _pull(self) -> None:
        """Read what the kernel holds now (up to the buffer limit)."""
        limit = self._limit
        while not self._eof and (limit is None or len(self._buffer) < limit):
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                break
            except OSError as exc:
                # A pty master reads EIO once every slave end is closed.
                if exc.errno != errno.EIO:
                    raise
                data = b""
            if not data:
                self._set_eof()
                break
            self._buffer += data
            self._changed.set()
        if limit is not None and len(self._buffer) >= limit:
            self._pause()

    def _set_eof(self) -> None:
        self._eof = True
        self._pause()
        self._changed.set()

    async def finish(self, grace: float = 0.0) -> None:
        """The writer has exited: take what is left in the kernel, then report EOF.

        ``grace`` gives a natural EOF that much time to arrive first: a pty pushes the last
        output to its master asynchronously, after the writer may already be reaped.
        """
        if self._closed:
            return
        self._limit = None
        self._pull()
        if grace > 0 and not self._eof:
            self._resume()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    while not self._eof and not self._closed:
                        self._changed.clear()
                        await self._changed.wait()
        if not self._closed:
            self._pull()
        self._set_eof()

    @property
    def drained(self) -> bool:
        """Nothing left for anyone: EOF reached, everything read and, if someone reads this
        stream, that reader told EOF (else its next read would find the process released);
        or the stream closed."""
        if self._closed:
            return True
        return self._eof and not self._buffer and (self._eof_delivered or not self._read_started)

    async def read(self, size: int) -> bytes:
        """Up to ``size`` bytes; b"" only at EOF."""
        self._read_started = True
        while not self._buffer and not self._eof:
            self._changed.clear()
            await self._changed.wait()
        if not self._buffer:
            self._eof_delivered = True
            return b""
        chunk = bytes(self._buffer[:size])
        del self._buffer[:size]
        if self._limit is None or len(self._buffer) < self._limit // 2:
            self._resume()
        return chunk

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._set_eof()
        if self._owns_fd:
            os.close(self._fd)

    @property
    def fd(self) -> int:
        return self._fd

    @property
    def closed(self) -> bool:
        """The fd is closed (nothing left to hand over)."""
        return self._closed

    def snapshot(self) -> dict[str, Any]:
        """What a restored agent needs to go on (upgrade/state.py): the fd, and output
        pulled from the kernel but not read yet."""
        return {
            "fd": self._fd,
            "owns_fd": self._owns_fd,
            "buffer": base64.b64encode(self._buffer).decode(),
            "eof": self._eof,
            "closed": self._closed,
            "finishing": self._limit is None,
            "read_started": self._read_started,
            "eof_delivered": self._eof_delivered,
        }

    @classmethod
    def restored(cls, state: dict[str, Any]) -> OutputStream:
        closed = bool(state["closed"])
        stream = cls.__new__(cls)
        stream._fd = int(state["fd"])
        stream._owns_fd = bool(state["owns_fd"])
        stream._buffer = bytearray(base64.b64decode(state["buffer"]))
        stream._eof = bool(state["eof"]) or closed
        stream._closed = closed
        stream._reading = False
        stream._read_started = bool(state["read_started"])
        stream._eof_delivered = bool(state["eof_delivered"])
        stream._limit = None if state["finishing"] else HIGH_WATER
        stream._changed = asyncio.Event()
        stream._loop = asyncio.get_running_loop()
        if stream._buffer or stream._eof:
            stream._changed.set()
        if not closed:
            os.set_inheritable(stream._fd, False)
            if stream._limit is None or len(stream._buffer) < stream._limit:
                stream._resume()
        return stream


class InputStream:
    """The agent's write end of a process's stdin (pipe or pty master)."""

    def __init__(self, fd: int, *, owns_fd: bool = True, tty: bool = False) -> None:
        self._fd: int | None = fd
        self._owns_fd = owns_fd
        self._tty = tty
        self._lock = asyncio.Lock()
        os.set_blocking(fd, False)

    async def write(self, data: bytes) -> int:
        async with self._lock:
            if self._fd is None:
                raise BrokenPipeError(errno.EPIPE, "stdin is closed")
            view = memoryview(data)
            while view:
                try:
                    n = os.write(self._fd, view)
                except BlockingIOError:
                    await writable(self._fd)
                    continue
                view = view[n:]
            return len(data)

    async def close(self) -> None:
        async with self._lock:
            if self._fd is None:
                return
            if self._tty:
                # A pty has no half-close: send the terminal's EOF character instead.
                with contextlib.suppress(OSError):
                    os.write(self._fd, bytes([termios.tcgetattr(self._fd)[6][termios.VEOF][0]]))
            elif self._owns_fd:
                os.close(self._fd)
            self._fd = None

    def release(self) -> None:
        if self._fd is not None and self._owns_fd and not self._tty:
            os.close(self._fd)
        self._fd = None

    @property
    def fd(self) -> int | None:
        return self._fd

    def snapshot(self) -> dict[str, Any]:
        return {"fd": self._fd, "owns_fd": self._owns_fd, "tty": self._tty}

    @classmethod
    def restored(cls, state: dict[str, Any]) -> InputStream:
        fd = state["fd"]
        stream = cls.__new__(cls)
        stream._fd = None if fd is None else int(fd)
        stream._owns_fd = bool(state["owns_fd"])
        stream._tty = bool(state["tty"])
        stream._lock = asyncio.Lock()
        if stream._fd is not None:
            os.set_inheritable(stream._fd, False)
        return stream


def set_window_size(fd: int, rows: int, columns: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


class ConsoleSocket:
    """A listening unix socket on which the OCI runtime hands over the pty master fd."""

    def __init__(self, path: str) -> None:
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._sock.bind(path)
        self._sock.listen(1)
        self._sock.setblocking(False)

    async def receive_master(self) -> int:
        conn, _ = await asyncio.get_running_loop().sock_accept(self._sock)
        with conn:
            conn.setblocking(False)
            while True:
                try:
                    _, fds, _, _ = socket.recv_fds(conn, 4096, 1)
                except BlockingIOError:
                    await readable(conn.fileno())
                    continue
                if not fds:
                    raise ConnectionError("the OCI runtime sent no pty master")
                os.set_inheritable(fds[0], False)
                return fds[0]

    def close(self) -> None:
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
