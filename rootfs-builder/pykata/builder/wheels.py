"""The Python payload of the guest: our agent packages plus its dependencies as wheels.

The guest gets pykata.protocols, pykata.ttrpc and pykata.agent only (never the host CLI or
this builder). Dependency wheels are downloaded for the guest's interpreter (trixie's
CPython 3.13, x86_64): protobuf's abi3 wheel and the pure-Python pyroute2, pyudev and
prometheus_client.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import re
import shutil
import sys
import zipfile
from pathlib import Path

from pykata.agent.version import VERSION
from pykata.builder.stages import BuildError, Stages

GUEST_PACKAGES = ("protocols", "ttrpc", "agent")
GUEST_PYTHON = "3.13"
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")
SITE_PACKAGES = Path("usr/lib/python3/dist-packages")
AGENT_SCRIPT = """#!/usr/bin/python3 -I
from pykata.agent.main import main

raise SystemExit(main())
"""


def guest_requirements() -> list[str]:
    """Requirement strings of the agent: pykata's base dependencies plus the `guest` extra."""
    requires = importlib.metadata.requires("pykata") or []
    chosen = []
    for requirement in requires:
        spec, _, marker = requirement.partition(";")
        marker = marker.strip()
        if not marker or re.fullmatch(r"""extra\s*==\s*["']guest["']""", marker):
            chosen.append(spec.strip())
    return sorted(chosen)


def download(requirements: list[str], cache: Path, stages: Stages) -> Path:
    """Download guest wheels once per requirement set; returns the wheel folder."""
    key = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:16]
    folder = cache / key
    done = folder / ".complete"
    if done.exists():
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    stages.run(
        [
            sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
            "--only-binary=:all:", *platforms, "--python-version", GUEST_PYTHON,
            "--implementation", "cp", "-d", folder, *requirements,
        ]
    )  # fmt: skip
    done.touch()
    return folder


def wheel_versions(folder: Path) -> dict[str, str]:
    """{distribution: version} of the wheels in a folder (from the wheel file names)."""
    versions = {}
    for wheel in sorted(folder.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        versions[name.lower().replace("_", "-")] = version
    return versions


def install_wheels(folder: Path, tree: Path) -> None:
    """Unpack every wheel into the tree's site-packages (a wheel is a zip laid out for it)."""
    site = tree / SITE_PACKAGES
    site.mkdir(parents=True, exist_ok=True)
    for wheel in sorted(folder.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                # Scripts and headers (the .data folder) are of no use in the guest.
                if not member.split("/", 1)[0].endswith(".data"):
                    archive.extract(member, site)


def guest_package_dirs() -> list[Path]:
    """The source folders of the guest's subpackages of pykata, wherever pykata is installed."""
    folders = []
    for name in GUEST_PACKAGES:
        spec = importlib.util.find_spec(f"pykata.{name}")
        if spec is None or spec.origin is None:
            raise BuildError(f"pykata.{name} is not installed beside kata-image")
        folders.append(Path(spec.origin).parent)
    return folders


def install_agent(tree: Path) -> str:
    """Copy the guest subpackages of pykata into the tree; returns the agent version."""
    target = tree / SITE_PACKAGES / "pykata"
    target.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyi")
    for source in guest_package_dirs():
        shutil.copytree(source, target / source.name, ignore=ignore, dirs_exist_ok=True)
    version = VERSION
    info = tree / SITE_PACKAGES / f"pykata-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: pykata\nVersion: {version}\n")
    script = tree / "usr/bin/kata-agent"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(AGENT_SCRIPT)
    script.chmod(0o755)
    return version
