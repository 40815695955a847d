"""virtiofsd: the standalone (Rust) one when installed, else Debian's QEMU 7.2 C daemon."""

from __future__ import annotations

import shutil
from pathlib import Path

C_VIRTIOFSD = Path("/usr/lib/qemu/virtiofsd")
RUST_LOCATIONS = (Path("/usr/libexec/virtiofsd"), Path("/usr/lib/virtiofsd"))


def find() -> tuple[Path, bool]:
    """``(binary, is_rust)``; raises FileNotFoundError naming the package to install."""
    in_path = shutil.which("virtiofsd")
    for candidate in (*(Path(p) for p in [in_path] if p), *RUST_LOCATIONS):
        if candidate.exists() and candidate != C_VIRTIOFSD:
            return candidate, True
    if C_VIRTIOFSD.exists():
        return C_VIRTIOFSD, False
    raise FileNotFoundError("virtiofsd not found: install qemu-system-common or virtiofsd")


def command(socket: Path, shared_dir: Path) -> list[str]:
    binary, is_rust = find()
    if is_rust:
        return [
            str(binary), "--socket-path", str(socket), "--shared-dir", str(shared_dir),
            "--cache", "auto",
        ]  # fmt: skip
    return [
        str(binary), f"--socket-path={socket}", "-o", f"source={shared_dir}",
        "-o", "cache=auto",
    ]  # fmt: skip
