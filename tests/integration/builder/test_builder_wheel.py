"""kata-image installed from a wheel, as an image CI pipeline installs it: the builder's
inputs (mkosi configuration, kernel fragments, systemd units) come with the package, and the
commands run from a folder that is not a checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def run(*cmd: str | Path, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    if check and done.returncode != 0:
        pytest.fail(f"{cmd} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy: setuptools leaves build/ and *.egg-info in the source folder, and
    # build/ is where the checkout keeps its images.
    source = tmp_path_factory.mktemp("source") / "pykata"
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*cache"
    )
    shutil.copytree(ROOT, source, symlinks=True, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, source, cwd=out)
    (found,) = out.glob("pykata-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtualenv outside the checkout with only the wheel (and protobuf) in it."""
    venv = tmp_path_factory.mktemp("venv")
    run(sys.executable, "-m", "venv", venv, cwd=venv)
    run(venv / "bin/python", "-m", "pip", "install", "-q", "--disable-pip-version-check",
        wheel, cwd=venv)  # fmt: skip
    yield venv


def test_wheel_carries_builder_data_and_no_tests(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for data in (
        "pykata/builder/data/mkosi/mkosi.conf",
        "pykata/builder/data/mkosi/mkosi.profiles/initrd.conf",
        "pykata/builder/data/mkosi/mkosi.profiles/image/mkosi.conf",
        "pykata/builder/data/kernel-config/required.conf",
        "pykata/builder/data/kernel-config/fragments/base.conf",
        "pykata/builder/data/kernel-config/debian-modules.list",
        "pykata/builder/data/systemd-units/kata-agent.service",
    ):
        assert data in names, data
    assert "pykata/agent/main.py" in names and "pykata/host/ctl/main.py" in names
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]


def test_kata_image_runs_outside_checkout(installed: Path, tmp_path: Path) -> None:
    kata_image = installed / "bin/kata-image"
    assert "--flavour" in run(kata_image, "build", "--help", cwd=tmp_path).stdout
    located = run(
        installed / "bin/python", "-c",
        "from pykata.builder import layout; print(layout.MKOSI_CONFIG.resolve())",
        cwd=tmp_path,
    ).stdout.strip()  # fmt: skip
    assert located.startswith(str(installed)), located


def test_check_kernel_reads_packaged_requirements(installed: Path, tmp_path: Path) -> None:
    """A config with every required option passes; one without vsock names what is missing."""
    kata_image = installed / "bin/kata-image"
    required = (ROOT / "kernel-config" / "required.conf").read_text()
    good = tmp_path / "good.config"
    good.write_text(required)
    passed = run(kata_image, "check-kernel", good, cwd=tmp_path)
    assert "required options present" in passed.stdout
    bad = tmp_path / "bad.config"
    bad.write_text(
        required.replace("CONFIG_VIRTIO_VSOCKETS=y", "# CONFIG_VIRTIO_VSOCKETS is not set")
    )
    failed = run(kata_image, "check-kernel", bad, cwd=tmp_path, check=False)
    assert failed.returncode == 1
    assert "missing: CONFIG_VIRTIO_VSOCKETS=y" in failed.stdout
