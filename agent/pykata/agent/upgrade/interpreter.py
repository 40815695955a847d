"""Python for the new agent, started the way the running one was: the same interpreter
flags (an initrd may run the agent as ``python3 -ISOO`` with its library folder added by
hand, a development host as plain ``python3``) and the same library path, so the new code
finds what the running code found (protobuf, say) and nothing the image left out is needed
(the site module, for one)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def flags() -> list[str]:
    """The running interpreter's flags that matter to the new one; -P at least (the script's
    folder, pykata/agent/upgrade, must not shadow top-level modules)."""
    out = ["-I"] if sys.flags.isolated else ["-P"]  # -I implies -E, -s and -P
    if sys.flags.no_site:
        out.append("-S")
    if sys.flags.ignore_environment and not sys.flags.isolated:
        out.append("-E")
    if sys.flags.optimize:
        out.append("-" + "O" * sys.flags.optimize)
    if sys.flags.dont_write_bytecode:
        out.append("-B")
    return out


def argv() -> list[str]:
    return [sys.executable, *flags()]


def library_path(running_code: Path) -> str:
    """sys.path as JSON, without the running code's own folder (the new code takes its
    place) and without the empty entry of ``-c``."""
    own = os.path.realpath(running_code)
    return json.dumps([p for p in sys.path if p and os.path.realpath(p) != own])
