"""The C library, loaded once, for the few calls the os module does not offer."""

from __future__ import annotations

import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)
# Flags are unsigned long: without argtypes ctypes would pass a C int and truncate them.
libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def last_error(what: str, filename: str | None = None) -> OSError:
    """The OSError for the errno the last failed libc call left: "<what>: <strerror>"."""
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}", filename)
