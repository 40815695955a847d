"""Bound, listening sockets for the server's addresses."""

from __future__ import annotations

import os
import socket
import stat

from pykata.ttrpc.addresses import HvsockAddress, UnixAddress, VsockAddress, stream_socket

BACKLOG = 128


def listening_socket(address: UnixAddress | VsockAddress | HvsockAddress) -> socket.socket:
    """Bind and listen; a stale unix socket file at the path is replaced."""
    if isinstance(address, HvsockAddress):
        raise ValueError(f"cannot listen on {address}: hybrid vsock is a client-side transport")
    if isinstance(address, UnixAddress) and not address.abstract:
        _remove_stale_socket(address.path)
    sock = stream_socket(address)
    try:
        sock.bind(address.sockaddr)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def _remove_stale_socket(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    os.unlink(path)
