"""Python for the new agent, started the way the running one was: the same interpreter
flags (an initrd may run the agent as ``python3 -ISOO`` with its library folder added by
hand, a development host as plain ``python3``) and the same library path, so the new code
finds what the running code found (protobuf, say) and nothing the image left out is needed
(the site module, for one)."""

from __future__ import annotations

import ctypes
import json
import sys

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


def library_path() -> str:
    """sys.path as JSON, without the empty entry of ``-c``. The running code's folder stays
    (other packages may live there, protobuf in an image's dist-packages): the new code goes
    before it, and pykata being a namespace package, its modules are found there first."""
    return json.dumps([p for p in sys.path if p])


def parent_death_signal() -> int:
    """The signal this process gets when its parent dies (prctl PR_SET_PDEATHSIG; 0: none).
    An exec from the main thread keeps it, one from another thread (boot.py's watchdog) does
    not: boot.py sets it again from this number. Tests rely on it (``unshare --kill-child``)."""
    sig = ctypes.c_int(0)
    libc.prctl(PR_GET_PDEATHSIG, ctypes.byref(sig), 0, 0, 0)
    return sig.value
