"""The agent's JSON log lines."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterator

import pytest

from pykata.agent import log
from pykata.agent.config import TRACE

RFC3339_US = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


@pytest.fixture(autouse=True)
def restore_loggers() -> Iterator[None]:
    """log.setup() reconfigures process-wide loggers: give other tests the defaults back."""
    yield
    for name in ("kata-agent", "ttrpc", "asyncio", "kata-agent.sockettest"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)


@pytest.fixture
def stream() -> io.StringIO:
    out = io.StringIO()
    log.setup(TRACE, stream=out)
    return out


def records(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_record_shape(stream: io.StringIO) -> None:
    log.get("rpc").info("created", extra={"container": "c1", "exec_id": "e1"})
    (record,) = records(stream)
    assert record["msg"] == "created"
    assert record["level"] == "info"
    assert record["name"] == "kata-agent"
    assert record["source"] == "agent"
    assert record["subsystem"] == "rpc"
    assert record["container"] == "c1" and record["exec_id"] == "e1"
    assert isinstance(record["pid"], int)
    assert RFC3339_US.fullmatch(str(record["ts"]))


def test_context_does_not_hide_base_fields(stream: io.StringIO) -> None:
    log.get("process").info("exited", extra={"pid": 4242, "source": "runc"})
    (record,) = records(stream)
    assert record["pid"] != 4242 and record["extra_pid"] == 4242
    assert record["source"] == "agent" and record["extra_source"] == "runc"


def test_levels_and_trace(stream: io.StringIO) -> None:
    logger = log.get("x")
    logger.log(TRACE, "t")
    logger.debug("d")
    logger.warning("w")
    logger.error("e")
    assert [r["level"] for r in records(stream)] == ["trace", "debug", "warning", "error"]


def test_level_filter() -> None:
    out = io.StringIO()
    log.setup(logging.WARNING, stream=out)
    log.get("x").info("hidden")
    log.get("x").warning("shown")
    assert [r["msg"] for r in records(out)] == ["shown"]


def test_announce_text_is_greppable(stream: io.StringIO) -> None:
    log.get("main").info("announce", extra={"config": {"a": 1}})
    assert '"msg": "announce"' in stream.getvalue()


def test_exception_and_odd_values(stream: io.StringIO) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        log.get("x").exception("failed", extra={"obj": object(), "bytes": b"\xff"})
    (record,) = records(stream)
    assert "ValueError: boom" in str(record["error"])
    assert record["level"] == "error"


def test_ttrpc_and_asyncio_loggers_get_the_same_format(stream: io.StringIO) -> None:
    logging.getLogger("ttrpc").warning("oops")
    logging.getLogger("asyncio").error("Exception in callback")
    assert [r["subsystem"] for r in records(stream)] == ["ttrpc", "asyncio"]


def test_socket_handler_streams_earlier_and_later_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"\0pykata-test-log-{os.getpid()}"
    attempts: list[int] = []

    def listen() -> socket.socket:
        attempts.append(1)
        if len(attempts) < 3:  # the transport is not there yet: the handler retries
            raise OSError(97, "Address family not supported")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(name)
        sock.listen(1)
        return sock

    monkeypatch.setattr(log.SocketLogHandler, "LISTEN_RETRY_DELAY", 0.01)
    handler = log.SocketLogHandler(listen, io.StringIO())
    handler.setFormatter(log.JsonFormatter())
    logger = logging.getLogger("kata-agent.sockettest")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.info("before connect")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        for _ in range(500):
            try:
                client.connect(name)
                break
            except (ConnectionRefusedError, FileNotFoundError):
                time.sleep(0.01)
        logger.info("after connect")
        client.settimeout(10)
        data = b""
        while data.count(b"\n") < 2:
            chunk = client.recv(4096)
            assert chunk
            data += chunk
    msgs = [json.loads(line)["msg"] for line in data.decode().splitlines()]
    assert msgs == ["before connect", "after connect"]
