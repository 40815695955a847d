"""Agent wheels for hot upgrades (docs/ops.md) built from the installed guest packages
(pykata.agent, .ttrpc, .protocols) with another version, optionally with source changes: for
the demo, the upgrade benchmark and the tests (a broken self-check, a restore that raises)."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import pykata.agent

# The folder holding the guest's pykata package (agent/ in a checkout, site-packages else).
AGENT_TREE = Path(pykata.agent.__file__).resolve().parent.parent.parent
PACKAGES = ("pykata/agent", "pykata/ttrpc", "pykata/protocols")


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_agent_wheel(
    out_dir: Path,
    version: str,
    patches: dict[str, tuple[str, str]] | None = None,
) -> Path:
    """A wheel of the guest packages at ``version``; ``patches``: path in the wheel ->
    (text to find, replacement), each applied once and required to apply."""
    patches = dict(patches or {})
    files: dict[str, bytes] = {}
    for package in PACKAGES:
        for path in sorted((AGENT_TREE / package).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files[path.relative_to(AGENT_TREE).as_posix()] = path.read_bytes()
    version_py = "pykata/agent/version.py"
    text = files[version_py].decode()
    current = next(line for line in text.splitlines() if line.startswith("VERSION = "))
    files[version_py] = text.replace(current, f"VERSION = {version!r}").encode()
    for name, (old, new) in patches.items():
        source = files[name].decode()
        if old not in source:
            raise ValueError(f"{name}: {old!r} not found")
        files[name] = source.replace(old, new, 1).encode()
    tag = version.replace("-", "_")
    dist = f"pykata-{tag}.dist-info"
    files[f"{dist}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: pykata\nVersion: {version}\n".encode()
    )
    files[f"{dist}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = [_record_line(name, data) for name, data in files.items()]
    files[f"{dist}/RECORD"] = ("\n".join([*record, f"{dist}/RECORD,,"]) + "\n").encode()
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = out_dir / f"pykata-{tag}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            # A fixed date: the same sources give the same bytes (and the same sha256).
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return wheel


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
