"""GetDiagnosticData's termination_log: the message behind a container's
terminationMessagePath, read beneath the bind roots (/dev/shm here: it needs no root)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pykata.agent.container.termination import ANNOTATION, MAX_MESSAGE, message
from pykata.agent.errors import FailedPrecondition, InvalidArgument

DESTINATION = "/dev/termination-log"


@pytest.fixture
def source() -> Iterator[Path]:
    path = Path("/dev/shm") / f"pykata-termination-{secrets.token_hex(4)}"
    yield path
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    else:
        path.unlink(missing_ok=True)


def spec(source: str, *, annotated: bool = True, mounted: bool = True) -> dict[str, Any]:
    mounts = [{"destination": DESTINATION, "source": source, "type": "bind", "options": ["rbind"]}]
    return {
        "annotations": {ANNOTATION: DESTINATION} if annotated else {},
        "mounts": mounts if mounted else [],
    }


def test_reads_the_message(source: Path) -> None:
    source.write_bytes(b"exit reason\n")
    assert message(spec(str(source))) == "exit reason\n"


def test_at_most_4_kib_and_bad_utf8_replaced(source: Path) -> None:
    source.write_bytes(b"\xff" + b"x" * (2 * MAX_MESSAGE))
    text = message(spec(str(source)))
    assert text.startswith("\ufffd") and len(text) == MAX_MESSAGE


def test_not_written_yet_is_empty(source: Path) -> None:
    assert message(spec(str(source))) == ""


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"annotated": False}, FailedPrecondition, "no io.kubernetes.container"),
        ({"mounted": False}, FailedPrecondition, "no bind mount at"),
    ],
)
def test_missing_annotation_or_mount(
    source: Path, kwargs: dict[str, bool], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        message(spec(str(source), **kwargs))


def test_source_outside_the_bind_roots() -> None:
    with pytest.raises(InvalidArgument, match="outside the bind roots"):
        message(spec("/etc/passwd"))


def test_symlink_and_directory_refused(source: Path) -> None:
    source.symlink_to("/etc/passwd")
    with pytest.raises(InvalidArgument, match="symlink"):
        message(spec(str(source)))
    source.unlink()
    os.mkdir(source)
    with pytest.raises(InvalidArgument, match="not a regular file"):
        message(spec(str(source)))
