"""Build stages: one progress line per stage with its duration, all command output in a log.

A failing stage raises BuildError naming the stage and the log file, so the user knows
where to look without scrolling through mkosi's or make's output on the terminal.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


class BuildError(Exception):
    """A build step failed; the message says which stage and where its log is."""


class Stages:
    """Runs named stages, prints their timings and logs every command's output."""

    def __init__(self, log_path: Path, out: TextIO = sys.stderr) -> None:
        self.log_path = log_path
        self.out = out
        self.timings: dict[str, float] = {}
        self._current: str | None = None
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("")

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def log(self, text: str) -> None:
        with self.log_path.open("a") as log:
            log.write(text if text.endswith("\n") else text + "\n")

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._print(f"==> {name} ...")
        self.log(f"===== stage {name} =====")
        self._current = name
        t0 = time.monotonic()
        try:
            yield
        except BuildError as exc:
            if str(exc).startswith("stage "):
                raise
            raise BuildError(f"stage '{name}' failed: {exc} (log: {self.log_path})") from exc
        except Exception as exc:
            raise BuildError(f"stage '{name}' failed: {exc} (log: {self.log_path})") from exc
        finally:
            self._current = None
        seconds = time.monotonic() - t0
        self.timings[name] = seconds
        self._print(f"    {name}: done in {seconds:.1f}s")

    def run(
        self,
        cmd: Sequence[str | Path],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        input_text: str | None = None,
    ) -> None:
        """Run a command with its output appended to the log; raise BuildError on failure."""
        argv = [str(arg) for arg in cmd]
        self.log("$ " + " ".join(argv))
        with self.log_path.open("a") as log:
            rc = subprocess.run(
                argv,
                cwd=cwd,
                env=env,
                input=input_text,
                stdin=None if input_text is not None else subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
                check=False,
            ).returncode
        if rc != 0:
            where = f"stage '{self._current}'" if self._current else "build"
            raise BuildError(f"{where} failed: {argv[0]} exited with {rc} (log: {self.log_path})")

    def output(
        self,
        cmd: Sequence[str | Path],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> str:
        """Run a command and return its stdout; stderr goes to the log."""
        argv = [str(arg) for arg in cmd]
        self.log("$ " + " ".join(argv))
        with self.log_path.open("a") as log:
            proc = subprocess.run(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                check=False,
            )
        if proc.returncode != 0:
            where = f"stage '{self._current}'" if self._current else "build"
            raise BuildError(
                f"{where} failed: {argv[0]} exited with {proc.returncode} (log: {self.log_path})"
            )
        return proc.stdout

    def summary(self) -> str:
        total = sum(self.timings.values())
        parts = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in self.timings.items())
        return f"total {total:.1f}s ({parts})"
