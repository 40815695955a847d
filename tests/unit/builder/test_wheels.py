"""The guest's Python payload: only the guest subpackages, wheels unpacked for site-packages."""

from __future__ import annotations

import zipfile
from pathlib import Path

from pykata.agent.version import VERSION
from pykata.builder import mkosi, wheels


def test_guest_requirements_are_base_plus_guest_extra() -> None:
    names = {req.split("<")[0].split(">")[0].split("=")[0] for req in wheels.guest_requirements()}
    assert names == {"protobuf", "pyroute2", "pyudev", "prometheus_client"}


def test_install_agent_carries_no_host_or_builder_code(tmp_path: Path) -> None:
    version = wheels.install_agent(tmp_path)
    assert version == VERSION
    site = tmp_path / wheels.SITE_PACKAGES / "pykata"
    present = {p.name for p in site.iterdir() if p.is_dir()}
    assert not present & {"host", "builder"}
    assert present <= set(wheels.GUEST_PACKAGES)
    assert (site / "protocols" / "agent_pb2.py").exists()
    assert not list(site.rglob("__pycache__")) and not list(site.rglob("*.pyi"))
    script = tmp_path / "usr/bin/kata-agent"
    assert script.stat().st_mode & 0o111
    assert "pykata.agent.main" in script.read_text()
    metadata = tmp_path / wheels.SITE_PACKAGES / f"pykata-{version}.dist-info" / "METADATA"
    assert f"Version: {version}" in metadata.read_text()


def test_install_wheels_unpacks_packages_without_data_dirs(tmp_path: Path) -> None:
    folder = tmp_path / "wheels"
    folder.mkdir()
    with zipfile.ZipFile(folder / "demo_pkg-1.2.3-py3-none-any.whl", "w") as whl:
        whl.writestr("demo_pkg/__init__.py", "VALUE = 1\n")
        whl.writestr("demo_pkg-1.2.3.dist-info/METADATA", "Name: demo-pkg\nVersion: 1.2.3\n")
        whl.writestr("demo_pkg-1.2.3.data/scripts/demo", "#!/bin/sh\n")
    tree = tmp_path / "tree"
    wheels.install_wheels(folder, tree)
    site = tree / wheels.SITE_PACKAGES
    assert (site / "demo_pkg/__init__.py").read_text() == "VALUE = 1\n"
    assert (site / "demo_pkg-1.2.3.dist-info/METADATA").exists()
    assert not (site / "demo_pkg-1.2.3.data").exists()
    assert wheels.wheel_versions(folder) == {"demo-pkg": "1.2.3"}


def test_mkosi_version_parsing() -> None:
    assert mkosi.parse_version("mkosi 25.3") == (25, 3)
    assert mkosi.parse_version("26~devel") == (26,)
    assert mkosi.parse_version("mkosi 14") < mkosi.MINIMUM <= mkosi.parse_version("25.3")
