"""Stage progress lines, timings, and failures that name the stage and the log."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from pykata.builder.stages import BuildError, Stages


def test_stage_prints_progress_and_records_timing(tmp_path: Path) -> None:
    out = io.StringIO()
    stages = Stages(tmp_path / "logs/build.log", out)
    with stages.stage("wheels"):
        stages.run([sys.executable, "-c", "print('downloaded')"])
    assert "==> wheels ..." in out.getvalue()
    assert "wheels: done in" in out.getvalue()
    assert set(stages.timings) == {"wheels"}
    log = stages.log_path.read_text()
    assert "===== stage wheels =====" in log
    assert "downloaded" in log
    assert stages.summary().startswith("total ")


def test_failing_command_names_stage_and_log(tmp_path: Path) -> None:
    stages = Stages(tmp_path / "build.log", io.StringIO())
    with pytest.raises(BuildError) as info, stages.stage("mkosi build (initrd)"):
        stages.run([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"])
    message = str(info.value)
    assert "stage 'mkosi build (initrd)'" in message
    assert "exited with 3" in message
    assert str(tmp_path / "build.log") in message
    assert "boom" in stages.log_path.read_text()
    assert "mkosi build (initrd)" not in stages.timings


def test_other_errors_inside_a_stage_become_build_errors(tmp_path: Path) -> None:
    stages = Stages(tmp_path / "build.log", io.StringIO())
    with (
        pytest.raises(BuildError, match=r"stage 'outputs' failed: .*nothing here"),
        stages.stage("outputs"),
    ):
        (tmp_path / "nothing here").read_text()
    with (
        pytest.raises(BuildError, match=r"stage 'kernel' failed: no such module"),
        stages.stage("kernel"),
    ):
        raise BuildError("no such module")


def test_output_returns_stdout_and_logs_stderr(tmp_path: Path) -> None:
    stages = Stages(tmp_path / "build.log", io.StringIO())
    text = stages.output(
        [sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr)"]
    )
    assert text == "out\n"
    assert "err" in stages.log_path.read_text()
    with pytest.raises(BuildError, match="exited with 1"):
        stages.output([sys.executable, "-c", "raise SystemExit(1)"])


def test_input_text_is_fed_to_the_command(tmp_path: Path) -> None:
    stages = Stages(tmp_path / "build.log", io.StringIO())
    stages.run([sys.executable, "-c", "import sys; print(sys.stdin.read().upper())"],
               input_text="start=2048\n")  # fmt: skip
    assert "START=2048" in stages.log_path.read_text()
