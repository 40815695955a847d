"""Address parsing: the forms Kata writes, and clear errors for the rest."""

from __future__ import annotations

import pytest

from pykata.ttrpc.addresses import (
    VMADDR_CID_ANY,
    HvsockAddress,
    UnixAddress,
    VsockAddress,
    parse_address,
)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("unix:///run/kata/agent.sock", UnixAddress("/run/kata/agent.sock")),
        ("unix://@kata-agent", UnixAddress("kata-agent", abstract=True)),
        ("vsock://-1:1024", VsockAddress(-1, 1024)),
        ("vsock://3:1024", VsockAddress(3, 1024)),
        ("hvsock:///run/vc/vm/x/kata.hvsock:1024", HvsockAddress("/run/vc/vm/x/kata.hvsock", 1024)),
        ("hvsock:///a:b/c:7", HvsockAddress("/a:b/c", 7)),
    ],
)
def test_valid_addresses(text: str, parsed: object) -> None:
    assert parse_address(text) == parsed
    assert str(parsed) == text


def test_sockaddrs() -> None:
    assert UnixAddress("name", abstract=True).sockaddr == "\0name"
    assert UnixAddress("/p").sockaddr == "/p"
    assert VsockAddress(-1, 1024).sockaddr == (VMADDR_CID_ANY, 1024)
    assert VsockAddress(2, 5).sockaddr == (2, 5)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("/run/agent.sock", "no scheme"),
        ("tcp://1.2.3.4:5", "unsupported address scheme"),
        ("unix://relative/path", "absolute path or @name"),
        ("unix://@", "absolute path or @name"),
        ("vsock://3", "vsock://CID:PORT"),
        ("vsock://x:1024", "invalid CID"),
        ("vsock://3:port", "invalid port"),
        ("vsock://-2:1024", "CID -2 out of range"),
        ("vsock://3:4294967296", "port 4294967296 out of range"),
        ("hvsock://relative:1024", "hvsock:///path/to/sock:PORT"),
        ("hvsock:///path/without/port", "hvsock:///path/to/sock:PORT"),
        ("hvsock:///sock:-1", "port -1 out of range"),
    ],
)
def test_invalid_addresses(text: str, error: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_address(text)
    assert error in str(info.value)
