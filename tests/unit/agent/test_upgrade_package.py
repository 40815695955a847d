"""The new agent's artifact: uploads in order, the sha256 check, unpacking beside the running
code and nowhere else."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from pykata.agent.errors import FailedPrecondition, InvalidArgument
from pykata.agent.upgrade import package
from pykata.host.agent_wheel import build_agent_wheel


@pytest.fixture(autouse=True)
def _own_run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(package, "VERSIONS", tmp_path / "versions")
    monkeypatch.setattr(package, "INCOMING", tmp_path / "incoming")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_wheel_unpacks_beside_under_its_sha256(tmp_path: Path) -> None:
    wheel = build_agent_wheel(tmp_path, "9.9.9")
    code = package.unpack(wheel, digest(wheel))
    assert code == package.VERSIONS / digest(wheel)
    assert "VERSION = '9.9.9'" in (code / "pykata/agent/version.py").read_text()
    assert {p.name for p in code.iterdir()} == {"pykata", "pykata-9.9.9.dist-info"}
    assert package.unpack(wheel, digest(wheel)) == code  # the same artifact again


def test_a_sha256_mismatch_is_refused(tmp_path: Path) -> None:
    wheel = build_agent_wheel(tmp_path, "9.9.9")
    with pytest.raises(InvalidArgument, match="sha256 mismatch"):
        package.unpack(wheel, "0" * 64)
    assert not package.VERSIONS.exists() or not any(package.VERSIONS.iterdir())


@pytest.mark.parametrize(
    ("names", "error"),
    [
        (["../escape.py", *package.REQUIRED], "leaves its folder"),
        (["/abs.py", *package.REQUIRED], "leaves its folder"),
        (["pykata/agent/__main__.py"], "pykata/agent/upgrade/restore.py missing"),
    ],
)
def test_bad_archives_are_refused(tmp_path: Path, names: list[str], error: str) -> None:
    artifact = tmp_path / "bad.zip"
    with zipfile.ZipFile(artifact, "w") as archive:
        for name in names:
            archive.writestr(name, "x = 1\n")
    with pytest.raises(InvalidArgument, match=error):
        package.unpack(artifact, digest(artifact))
    assert not (tmp_path / "escape.py").exists()
    assert [p.name for p in package.VERSIONS.iterdir()] == []


def test_not_a_zip_is_refused(tmp_path: Path) -> None:
    artifact = tmp_path / "junk.whl"
    artifact.write_bytes(b"not a zip at all")
    with pytest.raises(InvalidArgument, match="not a wheel or zip"):
        package.unpack(artifact, digest(artifact))


def test_upload_chunks_come_in_order_within_the_size() -> None:
    upload = package.Upload("a" * 64, 10)
    upload.write(0, b"12345")
    with pytest.raises(FailedPrecondition, match="expected 5"):
        upload.write(3, b"xx")
    with pytest.raises(InvalidArgument, match="past the announced size"):
        upload.write(5, b"123456")
    upload.write(5, b"67890")
    assert upload.complete and upload.path.read_bytes() == b"1234567890"
    with pytest.raises(InvalidArgument):
        package.Upload("a" * 64, package.MAX_SIZE + 1)


@pytest.mark.parametrize("text", ["", "xyz", "A" * 63, "g" * 64])
def test_sha256_must_be_64_hex_digits(text: str) -> None:
    with pytest.raises(InvalidArgument):
        package.check_sha256(text)
    assert package.check_sha256("AB" * 32) == "ab" * 32
