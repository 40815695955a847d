"""The guest's packet filter rules as iptables-save text (GetIPTables / SetIPTables)."""

from __future__ import annotations

import shutil

from pykata.agent.errors import DeadlineExceeded, Internal, InvalidArgument, Unavailable
from pykata.agent.reaper import Reaper

# As the Rust agent: iptables-restore waits this long for the xtables lock, and so do we
# for the whole command.
RESTORE_WAIT_S = 5
SAVE_TIMEOUT_S = 30
MAX_RULES_BYTES = 4 * 1024 * 1024


def _tool(name: str, ipv6: bool) -> str:
    command = f"ip6tables-{name}" if ipv6 else f"iptables-{name}"
    path = shutil.which(command, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        raise Unavailable(f"{command} is not installed in the guest")
    return path


async def save(reaper: Reaper, ipv6: bool) -> bytes:
    argv = [_tool("save", ipv6)]
    try:
        code, out, err = await reaper.run(argv, timeout=SAVE_TIMEOUT_S)
    except TimeoutError as exc:
        raise DeadlineExceeded(str(exc)) from exc
    if code != 0:
        raise Internal(f"{argv[0]} failed ({code}): {err.decode(errors='replace').strip()}")
    return out


async def restore(reaper: Reaper, ipv6: bool, rules: bytes) -> bytes:
    if len(rules) > MAX_RULES_BYTES:
        raise InvalidArgument(f"iptables rules of {len(rules)} bytes (at most {MAX_RULES_BYTES})")
    argv = [_tool("restore", ipv6), "--wait", str(RESTORE_WAIT_S)]
    try:
        code, out, err = await reaper.run(argv, input=rules, timeout=RESTORE_WAIT_S + 25)
    except TimeoutError as exc:
        raise DeadlineExceeded(str(exc)) from exc
    if code != 0:
        # As the Rust agent: the command's own message says whether the rules or the guest
        # (a kernel without the tables) are at fault.
        raise Internal(f"{argv[0]} failed ({code}): {err.decode(errors='replace').strip()}")
    return out
