"""Build-host tools the builder runs, installed from the host's own package archive."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from pykata.builder.stages import Stages


def missing(tools: Mapping[str, str]) -> list[str]:
    """Packages providing the tools (commands, or files when given as absolute paths) that
    this host lacks."""
    absent = {
        package
        for tool, package in tools.items()
        if not (Path(tool).exists() if tool.startswith("/") else shutil.which(tool))
    }
    return sorted(absent)


def ensure(tools: Mapping[str, str], stages: Stages) -> None:
    """apt-get install whatever is missing (no upgrade of anything already installed)."""
    packages = missing(tools)
    if packages:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        stages.run(["apt-get", "update", "-q"], env=env)
        stages.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages], env=env
        )
