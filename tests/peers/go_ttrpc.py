"""containerd's Go ttRPC as a test and benchmark peer: ``peer_binary()`` builds it if needed.

The program and its build live in ``go-ttrpc/`` (a directory name Python cannot import, so
its ``build.py`` is loaded by path); ``just peer-go-ttrpc`` runs the same build by hand.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

BUILD_SCRIPT = Path(__file__).resolve().parent / "go-ttrpc" / "build.py"
RECIPE = "just peer-go-ttrpc"


class PeerBuildError(RuntimeError):
    """The peer could not be built; the message names the recipe and ends with the log."""


def _build_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("go_ttrpc_build", BUILD_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def peer_binary() -> Path:
    """The go-ttrpc-peer binary, (re)built when its sources or libraries changed."""
    build = _build_module()
    try:
        binary: Path = build.build()
    except build.BuildError as e:
        raise PeerBuildError(
            f"building the Go ttRPC peer failed: {e}\n"
            f"(rebuild by hand with `{RECIPE}`; the end of {e.log}:)\n{e.tail()}"
        ) from e
    return binary
