"""The OCI runtime adapter picks a runtime that works on this system by itself."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pykata.agent.container.runtime import detect
from pykata.agent.errors import Unavailable
from pykata.agent.reaper import Reaper

pytestmark = pytest.mark.root


@pytest.fixture
async def reaper() -> AsyncIterator[Reaper]:
    r = Reaper()
    r.start()
    yield r
    r.stop()


@pytest.fixture
def broken_crun(tmp_path: Path) -> Path:
    """A crun that is installed but fails, like crun 1.8 on a hybrid cgroup layout."""
    crun = tmp_path / "crun"
    crun.write_text("#!/bin/sh\necho 'crun: cannot set up cgroups' >&2\nexit 1\n")
    crun.chmod(0o755)
    return tmp_path


async def test_a_failing_crun_falls_back_to_runc(
    reaper: Reaper, broken_crun: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runc = shutil.which("runc")
    if runc is None:
        pytest.fail("runc is not installed: `just setup` installs it")
    monkeypatch.setenv("PATH", f"{broken_crun}{os.pathsep}{os.environ['PATH']}")
    runtime = await detect(reaper)
    assert runtime.binary == runc


async def test_no_working_runtime_is_a_clear_error(
    reaper: Reaper, broken_crun: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(broken_crun))
    with pytest.raises(Unavailable, match="no working OCI runtime") as failure:
        await detect(reaper)
    # Each candidate says why it was not taken.
    assert "crun create failed (exit 1): " in str(failure.value)
    assert "stderr: crun: cannot set up cgroups" in str(failure.value)
    assert "runc: not installed" in str(failure.value)
