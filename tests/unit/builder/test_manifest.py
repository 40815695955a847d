"""manifest.json contents and the up-to-date check."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pykata.builder import manifest


def _manifest(input_hash: str = "abc") -> manifest.Manifest:
    return manifest.Manifest(
        flavour="initrd",
        kernel={
            "source": "debian",
            "version": "6.12.0",
            "package_version": "6.12.0-1",
            "config_sha256": "00",
        },
        agent_version="0.1.0",
        mkosi_version="25.3",
        debian_packages={"python3": "3.13.5-1"},
        wheels={"protobuf": "7.36.2"},
        modules=["vsock"],
        input_hash=input_hash,
        build_seconds=1.5,
        built_at="2026-01-01T00:00:00+00:00",
    )


def _outputs(tmp_path: Path) -> None:
    (tmp_path / "vmlinuz").write_bytes(b"kernel")
    (tmp_path / "kata-initrd.img").write_bytes(b"initrd!")


def test_manifest_records_checksums_and_sizes(tmp_path: Path) -> None:
    _outputs(tmp_path)
    m = _manifest()
    m.add_files(tmp_path, ["vmlinuz", "kata-initrd.img"])
    data = json.loads(m.write(tmp_path).read_text())
    assert data["files"]["vmlinuz"] == {
        "sha256": hashlib.sha256(b"kernel").hexdigest(),
        "size": 6,
    }
    assert data["files"]["kata-initrd.img"]["size"] == 7
    assert data["kernel"]["version"] == "6.12.0"
    assert data["debian_packages"] == {"python3": "3.13.5-1"}
    assert data["wheels"] == {"protobuf": "7.36.2"}
    assert manifest.load(tmp_path) == data


def test_up_to_date_needs_same_hash_and_intact_files(tmp_path: Path) -> None:
    assert not manifest.up_to_date(tmp_path, "abc")
    _outputs(tmp_path)
    m = _manifest()
    m.add_files(tmp_path, ["vmlinuz", "kata-initrd.img"])
    m.write(tmp_path)
    assert manifest.up_to_date(tmp_path, "abc")
    assert not manifest.up_to_date(tmp_path, "other")
    (tmp_path / "kata-initrd.img").write_bytes(b"truncated-or-replaced")
    assert not manifest.up_to_date(tmp_path, "abc")
    (tmp_path / "kata-initrd.img").unlink()
    assert not manifest.up_to_date(tmp_path, "abc")


def test_corrupt_manifest_means_rebuild(tmp_path: Path) -> None:
    (tmp_path / manifest.MANIFEST).write_text("{not json")
    assert manifest.load(tmp_path) is None
    assert not manifest.up_to_date(tmp_path, "abc")


def test_debian_packages_from_mkosi_manifest(tmp_path: Path) -> None:
    path = tmp_path / "image.manifest"
    path.write_text(json.dumps({"packages": [
        {"type": "deb", "name": "crun", "version": "1.21-1", "architecture": "amd64"},
        {"type": "deb", "name": "kmod", "version": "34.2-2", "architecture": "amd64"},
    ]}))  # fmt: skip
    assert manifest.debian_packages(path) == {"crun": "1.21-1", "kmod": "34.2-2"}
