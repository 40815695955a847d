"""manifest.json: what went into the artifacts."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256(path), "size": path.stat().st_size}


def debian_packages(mkosi_manifest: Path) -> dict[str, str]:
    """{package: version} from the JSON manifest mkosi writes next to its output."""
    data = json.loads(mkosi_manifest.read_text())
    return {pkg["name"]: pkg["version"] for pkg in data.get("packages", [])}


@dataclass
class Manifest:
    flavour: str
    kernel: dict[str, Any]
    agent_version: str
    mkosi_version: str
    debian_packages: dict[str, str]
    wheels: dict[str, str]
    modules: list[str]
    input_hash: str
    build_seconds: float
    built_at: str
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add_files(self, output: Path, names: list[str]) -> None:
        for name in names:
            self.files[name] = file_entry(output / name)

    def write(self, output: Path) -> Path:
        path = output / MANIFEST
        path.write_text(json.dumps(self.__dict__, indent=2, sort_keys=True) + "\n")
        return path


def load(output: Path) -> dict[str, Any] | None:
    path = output / MANIFEST
    if not path.is_file():
        return None
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return data


def up_to_date(output: Path, input_hash: str) -> bool:
    """The output folder already holds intact artifacts built from the same inputs."""
    data = load(output)
    if data is None or data.get("input_hash") != input_hash:
        return False
    for name, entry in data.get("files", {}).items():
        path = output / name
        if not path.is_file() or path.stat().st_size != entry["size"]:
            return False
    return bool(data.get("files"))
