"""The new agent's interpreter is started as the running agent's was: an agent run like the
slim initrd's /init (``python3 -ISOO``, no site module, its library folder added by hand)
self-checks new code under the same flags and library path."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pykata.agent
from pykata.agent.upgrade import interpreter
from pykata.host.agent_wheel import build_agent_wheel

AGENT_DIR = str(Path(pykata.agent.__file__).resolve().parent.parent.parent)
SITE = sysconfig.get_paths()["purelib"]

# As main's /init: no site, the agent's folders added by hand.
PROBE = """
import asyncio, json, sys
sys.path.extend([{agent!r}, {site!r}])
from pathlib import Path
from pykata.agent.reaper import Reaper
from pykata.agent.upgrade import interpreter, package

async def check():
    reaper = Reaper()
    reaper.start()
    found = await package.self_check(Path({code!r}), reaper)
    return [found.version, found.state_formats]

print(json.dumps({{"argv": interpreter.argv(), "check": asyncio.run(check())}}))
"""


def test_an_agent_run_like_the_slim_init_self_checks_new_code_the_same_way(
    tmp_path: Path,
) -> None:
    code = tmp_path / "code"
    with zipfile.ZipFile(build_agent_wheel(tmp_path, "7.7.7")) as archive:
        archive.extractall(code)
    probe = PROBE.format(agent=AGENT_DIR, site=SITE, code=str(code))
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-OO", "-c", probe], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["argv"] == [sys.executable, "-I", "-S", "-OO"]
    assert result["check"] == ["7.7.7", [1]]


def test_the_library_path_drops_unpacked_versions(tmp_path: Path) -> None:
    """After several upgrades sys.path holds earlier versions' folders: the next new agent
    gets none of them, so the path does not grow with each upgrade."""
    versions = tmp_path / "versions"
    code = f"""
import sys
sys.path[:0] = ["", {str(versions / "a")!r}, {str(versions / "b")!r}, {str(versions / "a")!r}]
from pathlib import Path
from pykata.agent.upgrade import interpreter
print(interpreter.library_path(Path({str(versions)!r})))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    path = json.loads(out)
    assert path and not [p for p in path if p.startswith(str(versions)) or not p]
    assert interpreter.library_path(versions) == json.dumps([p for p in sys.path if p])
