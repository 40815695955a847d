"""ttRPC endpoint addresses as Kata writes them.

- ``unix:///path/to/sock``      unix socket on the filesystem
- ``unix://@name``              abstract unix socket
- ``vsock://CID:PORT``          AF_VSOCK; CID -1 means VMADDR_CID_ANY (listeners only)
- ``hvsock:///path/to/sock:PORT`` hybrid vsock (Firecracker / Cloud Hypervisor): a unix
  socket on the host that forwards to guest vsock PORT after a ``CONNECT PORT`` line
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

VMADDR_CID_ANY = 0xFFFFFFFF
_MAX_U32 = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class UnixAddress:
    path: str
    abstract: bool = False

    @property
    def sockaddr(self) -> str:
        # Linux abstract names start with a NUL byte instead of living in the filesystem.
        return "\0" + self.path if self.abstract else self.path

    def __str__(self) -> str:
        return f"unix://@{self.path}" if self.abstract else f"unix://{self.path}"


@dataclass(frozen=True, slots=True)
class VsockAddress:
    cid: int
    port: int

    @property
    def sockaddr(self) -> tuple[int, int]:
        return (VMADDR_CID_ANY if self.cid == -1 else self.cid, self.port)

    def __str__(self) -> str:
        return f"vsock://{self.cid}:{self.port}"


@dataclass(frozen=True, slots=True)
class HvsockAddress:
    path: str
    port: int

    def __str__(self) -> str:
        return f"hvsock://{self.path}:{self.port}"


Address = UnixAddress | VsockAddress | HvsockAddress


def _number(text: str, what: str, address: str, low: int, high: int) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise ValueError(f"invalid {what} {text!r} in address {address!r}") from None
    if not low <= value <= high:
        raise ValueError(f"{what} {value} out of range in address {address!r}")
    return value


def parse_address(address: str) -> Address:
    """Parse an address; raises ValueError naming what is wrong with it."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        raise ValueError(f"address {address!r} has no scheme (unix://, vsock://, hvsock://)")
    if scheme == "unix":
        if rest.startswith("@") and len(rest) > 1:
            return UnixAddress(rest[1:], abstract=True)
        if rest.startswith("/"):
            return UnixAddress(rest)
        raise ValueError(f"unix address {address!r} needs an absolute path or @name")
    if scheme == "vsock":
        cid, sep, port = rest.partition(":")
        if not sep:
            raise ValueError(f"vsock address {address!r} must be vsock://CID:PORT")
        return VsockAddress(
            _number(cid, "CID", address, -1, _MAX_U32), _number(port, "port", address, 0, _MAX_U32)
        )
    if scheme == "hvsock":
        path, sep, port = rest.rpartition(":")
        if not sep or not path.startswith("/"):
            raise ValueError(f"hvsock address {address!r} must be hvsock:///path/to/sock:PORT")
        return HvsockAddress(path, _number(port, "port", address, 0, _MAX_U32))
    raise ValueError(f"unsupported address scheme {scheme!r} in {address!r}")


def stream_socket(address: UnixAddress | VsockAddress) -> socket.socket:
    """A non-blocking stream socket of the address family."""
    family = socket.AF_UNIX if isinstance(address, UnixAddress) else socket.AF_VSOCK
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    return sock
