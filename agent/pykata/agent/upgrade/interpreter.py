"""Python for the new agent, started the way the running one was: the same interpreter
flags (an initrd may run the agent as ``python3 -ISOO`` with its library folder added by
hand, a development host as plain ``python3``) and the same library path, so the new code
finds what the running code found (protobuf, say) and nothing the image left out is needed
(the site module, for one)."""

from __future__ import annotations

import ctypes
import json
import sys
from pathlib import Path

from pykata.agent.libc import libc

PR_GET_PDEATHSIG = 2


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


def library_path(versions: Path) -> str:
    """sys.path as JSON, without the empty entry of ``-c`` and without the unpacked agents
    under ``versions``: the new code goes first, and earlier versions must neither pile up
    (one more entry per upgrade) nor stay behind it. The folder the agent was installed in
    stays (other packages live there, protobuf in an image's dist-packages): pykata being a
    namespace package, the new code's modules are found first."""
    return json.dumps([p for p in sys.path if p and not Path(p).is_relative_to(versions)])


def parent_death_signal() -> int:
    """The signal this process gets when its parent dies (prctl PR_SET_PDEATHSIG; 0: none).
    An exec from the main thread keeps it, one from another thread (boot.py's watchdog) does
    not: boot.py sets it again from this number. Tests rely on it (``unshare --kill-child``)."""
    sig = ctypes.c_int(0)
    libc.prctl(PR_GET_PDEATHSIG, ctypes.byref(sig), 0, 0, 0)
    return sig.value
