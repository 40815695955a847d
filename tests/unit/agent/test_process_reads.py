"""ReadStdout/ReadStderr through a real ttRPC server: no read takes more than its answer can
carry, so output is never taken from a buffer and then lost to a refused response."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from pykata.agent.rpc.processes import MAX_READ_DATA, ProcessHandlers
from pykata.protocols import agent_pb2
from pykata.ttrpc import Client, Server
from pykata.ttrpc.framing import MAX_PAYLOAD
from pykata.ttrpc.server import _ok_response

AGENT = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
OUTPUT = b"".join(b"%d\n" % i for i in range(900_000))  # ~6.2 MB, over 4 MiB


class _BufferedOutput:
    """A container whose process wrote OUTPUT to stdout and stderr, kept as the agent keeps
    it: a read takes its bytes out of the buffer."""

    def __init__(self) -> None:
        self.stdout = bytearray(OUTPUT)
        self.stderr = bytearray(OUTPUT)
        self.asked: list[int] = []

    def _take(self, buffer: bytearray, size: int) -> bytes:
        self.asked.append(size)
        chunk = bytes(buffer[:size])
        del buffer[:size]
        return chunk

    async def read_stdout(self, exec_id: str, size: int) -> bytes:
        return self._take(self.stdout, size)

    async def read_stderr(self, exec_id: str, size: int) -> bytes:
        return self._take(self.stderr, size)


class _Sandbox:
    def __init__(self, container: _BufferedOutput) -> None:
        self.container = container

    def get_container(self, cid: str) -> _BufferedOutput:
        return self.container


@pytest.fixture
async def served() -> AsyncIterator[tuple[Any, _BufferedOutput]]:
    container = _BufferedOutput()
    with tempfile.TemporaryDirectory(prefix="reads-") as d:
        server = Server()
        server.register(AGENT, ProcessHandlers(cast(Any, _Sandbox(container))))
        address = f"unix://{d}/s.sock"
        await server.listen(address)
        async with server, await Client.connect(address) as client:
            yield client.stub(AGENT), container


def test_the_largest_read_fits_in_one_response_exactly() -> None:
    def framed(size: int) -> int:
        message = agent_pb2.ReadStreamResponse(data=b"x" * size).SerializeToString()
        return len(_ok_response(message))

    assert framed(MAX_READ_DATA) == MAX_PAYLOAD
    assert framed(MAX_READ_DATA + 1) > MAX_PAYLOAD


@pytest.mark.parametrize("stream", ["ReadStdout", "ReadStderr"])
async def test_reads_of_4_mib_deliver_every_byte(
    served: tuple[Any, _BufferedOutput], stream: str
) -> None:
    agent, container = served
    read = getattr(agent, stream)
    digest = hashlib.sha256()
    total = 0
    while True:
        response = await read(
            agent_pb2.ReadStreamRequest(container_id="c", exec_id="e", len=4 << 20), timeout=30
        )
        if not response.data:
            break
        digest.update(response.data)
        total += len(response.data)
    assert total == len(OUTPUT)
    assert digest.hexdigest() == hashlib.sha256(OUTPUT).hexdigest()
    assert max(container.asked) == MAX_READ_DATA
