"""JSON-lines logging in the Kata agent's shape.

Every record is one JSON object: ``ts`` (RFC 3339, UTC, microseconds), ``level``, ``msg``,
``pid``, ``name`` (kata-agent), ``source`` (agent), ``subsystem`` (from the logger name
``kata-agent.<subsystem>``) and any ``extra=`` context such as ``container`` or ``exec_id``.
Records go to stderr (the console), or, with ``agent.log_vport``, to the first client of a
vsock listener, as Kata does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from pykata.agent.config import TRACE

NAME = "kata-agent"
ROOT_LOGGER = "kata-agent"

LEVEL_NAMES = {
    TRACE: "trace",
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}

# LogRecord attributes that are not caller context.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def rfc3339(created: float) -> str:
    return datetime.fromtimestamp(created, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        name = record.name
        if name.startswith(ROOT_LOGGER + "."):
            subsystem = name[len(ROOT_LOGGER) + 1 :]
        elif name == ROOT_LOGGER:
            subsystem = "root"
        else:
            subsystem = name
        entry: dict[str, Any] = {
            "ts": rfc3339(record.created),
            "level": LEVEL_NAMES.get(record.levelno, record.levelname.lower()),
            "msg": record.getMessage(),
            "pid": record.process,
            "name": NAME,
            "source": "agent",
            "subsystem": subsystem,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                # Context never hides a base field (e.g. a child's "pid" vs the agent's).
                entry[f"extra_{key}" if key in entry else key] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class StreamHandler(logging.Handler):
    """Writes formatted lines to a text stream; a failing console never breaks the agent."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + "\n")
            self.stream.flush()
        except Exception:
            self.handleError(record)


class SocketLogHandler(logging.Handler):
    """Streams log lines to the client of a listening socket (the log vport).

    A thread creates the listener (retrying: in a fresh guest the vsock transport may still be
    loading), accepts one client at a time and sends it the queued lines; lines logged before
    a client arrives wait in a bounded queue (the oldest are dropped when it is full) so
    logging never blocks the agent.
    """

    QUEUE_LINES = 10000
    LISTEN_ATTEMPTS = 60
    LISTEN_RETRY_DELAY = 0.5

    def __init__(self, listen: Callable[[], socket.socket], fallback: TextIO) -> None:
        super().__init__()
        self._listen = listen
        self._fallback = fallback
        self._lines: queue.Queue[bytes] = queue.Queue(self.QUEUE_LINES)
        self._thread = threading.Thread(target=self._serve, name="log-vport", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (self.format(record) + "\n").encode()
        except Exception:
            self.handleError(record)
            return
        while True:
            try:
                self._lines.put_nowait(line)
                return
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._lines.get_nowait()

    def _listener(self) -> socket.socket | None:
        for _ in range(self.LISTEN_ATTEMPTS):
            try:
                return self._listen()
            except OSError as exc:
                error = exc
            time.sleep(self.LISTEN_RETRY_DELAY)
        self._fallback.write(f"kata-agent: no log vport listener ({error}); logs are lost\n")
        return None

    def _serve(self) -> None:
        listener = self._listener()
        if listener is None:
            return
        pending: bytes | None = None
        with listener:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn:
                    try:
                        while True:
                            if pending is None:
                                pending = self._lines.get()
                            conn.sendall(pending)
                            pending = None
                    except OSError:
                        continue


def vsock_listener(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind((socket.VMADDR_CID_ANY, port))
        sock.listen(1)
    except OSError:
        sock.close()
        raise
    return sock


def setup(level: int, *, log_vport: int = 0, stream: TextIO | None = None) -> logging.Logger:
    """Configure the ``kata-agent`` logger tree (and ``ttrpc``, ``asyncio``); return its root."""
    logging.addLevelName(TRACE, "TRACE")
    console = stream or sys.stderr
    handler: logging.Handler
    if log_vport:
        handler = SocketLogHandler(lambda: vsock_listener(log_vport), console)
    else:
        handler = StreamHandler(console)
    handler.setFormatter(JsonFormatter())
    # asyncio reports errors in callbacks (never raised anywhere) on its own logger.
    for name in (ROOT_LOGGER, "ttrpc", "asyncio"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
    return logging.getLogger(ROOT_LOGGER)


def level() -> int:
    return logging.getLogger(ROOT_LOGGER).level


def set_level(level: int) -> None:
    """Change the level of every logger setup() configured (the ops channel's SetLogLevel)."""
    for name in (ROOT_LOGGER, "ttrpc", "asyncio"):
        logging.getLogger(name).setLevel(level)


def get(subsystem: str) -> logging.Logger:
    return logging.getLogger(f"{ROOT_LOGGER}.{subsystem}")
