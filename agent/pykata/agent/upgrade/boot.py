"""The first code an upgrade's execve runs, from the *previous* agent's tree (known good):
``python FLAGS boot.py --code DIR --path JSON --pdeathsig N --state FD [--previous DIR
--ready R,W --deadline S] [--rolled-back REASON]``, FLAGS, ``--path`` (sys.path) and
``--pdeathsig`` (the parent-death signal, lost by an exec from a thread) as the agent ran.

It imports nothing of pykata itself, puts ``--code`` first on sys.path and runs that code's
``pykata.agent.upgrade.restore``. With ``--previous`` it guards the new code: if the restore
raises, or the new agent has not written to the ready pipe within ``--deadline`` seconds (a
thread watches; a signal would not do: handlers do not survive execve and PID 1 gets no
default-fatal signals), it execs itself again with the previous code and the same state fd,
which the previous agent wrote and can read. A rolled-back agent runs unguarded.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import sys
import threading

_rolling_back = threading.Lock()
PR_SET_PDEATHSIG = 1
# --path (JSON) and --pdeathsig as given, passed on to a rollback.
_library_path = "[]"
_pdeathsig = "0"


def _options(argv: list[str]) -> dict[str, str]:
    if len(argv) % 2:
        raise SystemExit(f"boot.py: options come in pairs, got {argv}")
    return {argv[i].removeprefix("--"): argv[i + 1] for i in range(0, len(argv), 2)}


def _keep_fds(state_fd: int) -> None:
    """The state's fds (sockets, stdio) may have been made close-on-exec by the failed code."""
    size = os.fstat(state_fd).st_size
    state = json.loads(os.pread(state_fd, size, 0))
    for fd in [state_fd, *state.get("fds", [])]:
        try:
            os.set_inheritable(fd, True)
        except OSError:
            continue


def rollback(previous: str, state_fd: int, reason: str) -> None:
    with _rolling_back:
        try:
            sys.stderr.write(f"kata-agent upgrade: rolling back to {previous}: {reason}\n")
            sys.stderr.flush()
        except Exception:
            pass
        _keep_fds(state_fd)
        boot = os.path.join(previous, "pykata", "agent", "upgrade", "boot.py")
        # The interpreter and its flags as this process was started.
        python = sys.orig_argv[: sys.orig_argv.index(sys.argv[0])]
        argv = [*python, boot, "--code", previous, "--path", _library_path]
        argv += ["--pdeathsig", _pdeathsig]
        os.execv(sys.executable, [*argv, "--state", str(state_fd), "--rolled-back", reason[:2000]])


def _watch(ready: int, deadline: float, previous: str, state_fd: int) -> None:
    readable, _, _ = select.select([ready], [], [], deadline)
    if readable and os.read(ready, 1):
        os.close(ready)
        return
    rollback(previous, state_fd, f"the new agent was not ready within {deadline:g}s")


def main(argv: list[str]) -> None:
    global _library_path, _pdeathsig
    options = _options(argv)
    code = options["code"]
    state_fd = int(options["state"])
    previous = options.get("previous", "")
    _library_path = options["path"]
    _pdeathsig = options["pdeathsig"]
    if int(_pdeathsig):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, int(_pdeathsig), 0, 0, 0)
    ready_w = -1
    if previous:
        ready_r, ready_w = (int(fd) for fd in options["ready"].split(","))
        os.set_inheritable(ready_r, False)
        os.set_inheritable(ready_w, False)
        deadline = float(options["deadline"])
        threading.Thread(
            target=_watch, args=(ready_r, deadline, previous, state_fd), daemon=True
        ).start()
    path = json.loads(_library_path)
    sys.path[:] = [code, *path, *(p for p in sys.path if p and p not in path)]
    try:
        from pykata.agent.upgrade import restore

        # Raises only before it reported ready; afterwards it handles its own failures.
        status = restore.run(state_fd, ready_w, options.get("rolled-back", ""))
    except BaseException as exc:
        if previous:
            rollback(previous, state_fd, f"the new agent failed to restore: {exc!r}")
        raise
    sys.exit(status)


if __name__ == "__main__":
    main(sys.argv[1:])
