"""The local terminal during `run --tty`/`exec --tty`: raw mode, and its size."""

from __future__ import annotations

import fcntl
import os
import struct
import termios
import tty
from collections.abc import Iterator
from contextlib import contextmanager


def terminal_size(fd: int) -> tuple[int, int]:
    """(rows, columns) of the terminal on fd, (0, 0) when fd is not a terminal."""
    try:
        packed = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    except OSError:
        return 0, 0
    rows, columns, _, _ = struct.unpack("HHHH", packed)
    return rows, columns


@contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """Keystrokes (Ctrl-C included) go to the container's terminal, not to this process."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
