"""Repeated builds reuse earlier work: the whole build when nothing changed, mkosi's
incremental cache when only the output folder (or our files, not the package set) did."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pykata.builder import build
from pykata.builder.build import Result
from pykata.builder.stages import Stages


@pytest.mark.vm
def test_unchanged_inputs_skip_the_build(guest_artifacts: Result) -> None:
    before = json.loads(guest_artifacts.manifest.read_text())
    output = guest_artifacts.artifact.parent
    stages = Stages(output / "rebuild.log")
    result = build.build(build.Options(flavour="initrd", output=output), stages)
    assert result.reused
    assert "mkosi build (initrd)" not in stages.timings
    assert json.loads(result.manifest.read_text()) == before


@pytest.mark.vm
def test_new_output_reuses_mkosi_package_cache(guest_artifacts: Result, tmp_path: Path) -> None:
    stages = Stages(tmp_path / "build.log")
    result = build.build(build.Options(flavour="initrd", output=tmp_path / "out"), stages)
    assert not result.reused
    log = stages.log_path.read_text()
    # mkosi restored the cached image instead of installing packages again.
    assert "Copying cached trees" in log
    assert "Unpacking python3" not in log
    built = json.loads(result.manifest.read_text())
    cached = json.loads(guest_artifacts.manifest.read_text())
    assert built["debian_packages"] == cached["debian_packages"]
    assert result.artifact.stat().st_size > 1 << 20


@pytest.mark.vm
def test_clean_rebuilds_from_packages(guest_artifacts: Result, tmp_path: Path) -> None:
    output = tmp_path / "out"
    stages = Stages(tmp_path / "build.log")
    build.build(build.Options(flavour="initrd", output=output), stages)
    result = build.build(build.Options(flavour="initrd", output=output, clean=True), stages)
    assert not result.reused
    log = stages.log_path.read_text()
    # mkosi dropped its cached image and installed the packages again.
    assert "Unpacking python3" in log
    assert json.loads(result.manifest.read_text())["debian_packages"]["crun"]
