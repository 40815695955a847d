"""ProcessTable: a waited-for process stays readable until its reader was told EOF."""

from __future__ import annotations

import os

import pytest

from pykata.agent.errors import InvalidArgument
from pykata.agent.process.process import Process
from pykata.agent.process.table import MAX_READ, ProcessTable


async def _exited(exec_id: str, output: bytes = b"") -> Process:
    """A process whose child wrote ``output`` to stdout and exited (no real child needed)."""
    process = Process(exec_id, init=False, terminal=False)
    child = process.pipes(0)
    if output:
        assert child.stdout is not None
        os.write(child.stdout, output)
    child.close()
    assert process.stdout is not None and process.stderr is not None
    await process.stdout.finish()
    await process.stderr.finish()
    return process


async def test_unread_output_outlives_the_wait_until_its_reader_saw_eof() -> None:
    table = ProcessTable()
    process = await _exited("e1", b"last words")
    table.add(process)
    assert process.stdout is not None
    await table.waited(process)
    assert "e1" not in table
    assert table.readable("e1") is process
    assert await table.read(process, process.stdout, 4) == b"last"
    assert await table.read(process, process.stdout, 100) == b" words"
    # Everything read, but the reader has not been told EOF yet: still there.
    assert table.readable("e1") is process
    assert await table.read(process, process.stdout, 100) == b""
    assert table.readable("e1") is None


async def test_a_read_racing_the_wait_gets_eof_not_a_released_process() -> None:
    table = ProcessTable()
    process = await _exited("e1", b"x")
    table.add(process)
    assert process.stdout is not None
    assert await table.read(process, process.stdout, 1) == b"x"  # the reader is started
    await table.waited(process)
    assert table.readable("e1") is process
    assert await table.read(process, process.stdout, 1) == b""
    assert table.readable("e1") is None


async def test_a_process_nobody_reads_is_released_when_waited() -> None:
    table = ProcessTable()
    process = await _exited("e1")
    table.add(process)
    await table.waited(process)
    assert table.readable("e1") is None


async def test_read_lengths() -> None:
    table = ProcessTable()
    process = await _exited("e1", b"abc")
    table.add(process)
    assert process.stdout is not None
    with pytest.raises(InvalidArgument, match="read length must be positive"):
        await table.read(process, process.stdout, 0)
    assert await table.read(process, process.stdout, MAX_READ * 2) == b"abc"
    await table.release_all()


async def test_release_all_takes_live_and_draining_processes_and_later_waits() -> None:
    table = ProcessTable()
    live, draining, later = [await _exited(e, b"unread") for e in ("a", "b", "c")]
    for process in (live, draining, later):
        table.add(process)
    await table.waited(draining)
    await table.release_all()
    assert table.readable("a") is None and table.readable("b") is None
    await table.waited(later)
    assert table.readable("c") is None
