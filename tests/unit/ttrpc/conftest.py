"""A real server on a unix socket with a scriptable grpc.Health handler."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from scripted_health import HEALTH, ScriptedHealth

from pykata.ttrpc import Server


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Short paths: sun_path holds 108 bytes and pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="ttrpc-") as d:
        yield Path(d)


@pytest.fixture
def handler() -> ScriptedHealth:
    return ScriptedHealth()


@pytest.fixture
async def server_address(sock_dir: Path, handler: ScriptedHealth) -> AsyncIterator[str]:
    server = Server()
    server.register(HEALTH, handler)
    address = f"unix://{sock_dir}/s.sock"
    await server.listen(address)
    async with server:
        yield address
