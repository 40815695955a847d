"""The new agent's code: received in chunks (or read from a guest path), its sha256 checked,
unpacked beside the running code under /run/kata-agent/versions/<sha256>/, then self-checked
by running it (``kata-agent --self-check``) before anything is switched.

The artifact is a wheel or any zip whose top level holds the ``pykata`` package (agent,
ttrpc, protocols); only ``pykata/`` and ``*.dist-info/`` entries are unpacked.
"""

from __future__ import annotations

import contextlib

# zipfile decodes member names with cp437 (unless flagged UTF-8) through the codec registry,
# which a static import closure (the slim initrd's) cannot see: named here so it is kept.
import encodings.cp437  # noqa: F401
import hashlib
import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pykata.agent
from pykata.agent.errors import FailedPrecondition, InvalidArgument
from pykata.agent.reaper import Reaper
from pykata.agent.upgrade import interpreter

ROOT = Path("/run/kata-agent")
VERSIONS = ROOT / "versions"
INCOMING = ROOT / "incoming"
MAX_SIZE = 64 << 20
MAX_UNPACKED = 256 << 20
SELF_CHECK_TIMEOUT = 120.0
REQUIRED = ("pykata/agent/__main__.py", "pykata/agent/upgrade/restore.py")


def running_code() -> Path:
    """The folder holding the running agent's ``pykata`` package (sys.path entry)."""
    return Path(pykata.agent.__file__).resolve().parent.parent.parent


def check_sha256(text: str) -> str:
    digest = text.strip().lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise InvalidArgument(f"sha256 must be 64 hex digits, got {text!r}")
    return digest


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class Upload:
    """One artifact arriving in order, chunk by chunk, into /run/kata-agent/incoming/."""

    def __init__(self, sha256: str, size: int) -> None:
        if not 0 < size <= MAX_SIZE:
            raise InvalidArgument(f"size must be 1..{MAX_SIZE} bytes, got {size}")
        self.sha256 = sha256
        self.size = size
        self.received = 0
        INCOMING.mkdir(parents=True, exist_ok=True)
        self.path = INCOMING / f"{sha256}.part"
        self.path.unlink(missing_ok=True)

    def write(self, offset: int, data: bytes) -> None:
        if offset != self.received:
            raise FailedPrecondition(
                f"chunk at offset {offset}, expected {self.received}: chunks come in order"
            )
        if self.received + len(data) > self.size:
            raise InvalidArgument(f"chunk goes past the announced size {self.size}")
        with self.path.open("ab") as f:
            f.write(data)
        self.received += len(data)

    @property
    def complete(self) -> bool:
        return self.received == self.size

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def _members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    members, total = [], 0
    for info in archive.infolist():
        name = PurePosixPath(info.filename)
        if name.is_absolute() or ".." in name.parts:
            raise InvalidArgument(f"artifact entry {info.filename!r} leaves its folder")
        top = name.parts[0] if name.parts else ""
        if top != "pykata" and not top.endswith(".dist-info"):
            continue
        total += info.file_size
        if total > MAX_UNPACKED:
            raise InvalidArgument(f"artifact unpacks to more than {MAX_UNPACKED} bytes")
        members.append(info)
    return members


def unpack(artifact: Path, sha256: str) -> Path:
    """Verify and unpack; the folder of the new code (the same one for the same sha256)."""
    actual = sha256_of(artifact)
    if actual != sha256:
        raise InvalidArgument(f"sha256 mismatch: the request says {sha256}, received {actual}")
    target = VERSIONS / sha256
    if (target / REQUIRED[0]).is_file():
        return target
    tmp = VERSIONS / f".{sha256}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        try:
            with zipfile.ZipFile(artifact) as archive:
                names = set(archive.namelist())
                missing = [r for r in REQUIRED if r not in names]
                if missing:
                    raise InvalidArgument(f"not a pykata agent artifact: {missing[0]} missing")
                archive.extractall(tmp, members=_members(archive))
        except zipfile.BadZipFile as exc:
            raise InvalidArgument(f"not a wheel or zip: {exc}") from exc
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


@dataclass(frozen=True)
class SelfCheck:
    version: str
    api_version: str
    state_formats: list[int]


# argv: the new code's folder, the library path (JSON).
SELF_CHECK = (
    "import json, sys; path = json.loads(sys.argv[2]); "
    "sys.path[:] = [sys.argv[1], *path, *(p for p in sys.path if p and p not in path)]; "
    "from pykata.agent.main import main; sys.exit(main(['--self-check']))"
)


async def self_check(code: Path, reaper: Reaper) -> SelfCheck:
    """Run the new code's own check in a child process started as the agent was (imports,
    config, versions)."""
    path = interpreter.library_path(VERSIONS)
    argv = [*interpreter.argv(), "-c", SELF_CHECK, str(code), path]
    try:
        status, out, err = await reaper.run(argv, timeout=SELF_CHECK_TIMEOUT)
    except TimeoutError as exc:
        raise FailedPrecondition(f"the new agent's self-check hung: {exc}") from exc
    if status != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        raise FailedPrecondition(
            f"the new agent's self-check failed (exit {status}): {' | '.join(tail)}"
        )
    return _report(out, code)


def _report(out: bytes, code: Path) -> SelfCheck:
    try:
        report = json.loads(out)
        checked = SelfCheck(
            str(report["version"]), str(report["api_version"]), list(report["state_formats"])
        )
        ran_from = os.path.realpath(report["code"])
    except (ValueError, KeyError, TypeError) as exc:
        raise FailedPrecondition(f"the new agent's self-check said nothing usable: {exc}") from exc
    if ran_from != os.path.realpath(code):
        raise FailedPrecondition(f"the self-check ran the code in {ran_from}, not {code}")
    return checked


def prune(keep: Path) -> None:
    """Remove unpacked versions and uploads other than ``keep`` (the running code)."""
    with contextlib.suppress(FileNotFoundError):
        for entry in VERSIONS.iterdir():
            if entry.resolve() != keep.resolve():
                shutil.rmtree(entry, ignore_errors=True)
    shutil.rmtree(INCOMING, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.rmdir(VERSIONS)
