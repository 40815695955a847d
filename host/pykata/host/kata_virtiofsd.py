"""kata-virtiofsd: the virtiofsd a Kata shim starts, on a host that has QEMU's C daemon.

The Kata shim runs `virtio_fs_daemon` with the Rust virtiofsd's flags (`--shared-dir=…
--fd=3 --cache=auto --syslog …`). Debian 12 ships QEMU 7.2's C virtiofsd, which spells them
`-o source=…`, `-o cache=…`; this translates the flags and execs the host's daemon, keeping
the socket fd the shim passed (a Rust virtiofsd, when installed, gets them as they are).
Unknown flags are refused rather than guessed.
"""

from __future__ import annotations

import os
import sys

from pykata.host.vm.virtiofsd import find

# Rust flag -> the C daemon's option (with the flag's value where it takes one).
_VALUE_OPTIONS = {"--shared-dir": "source", "--cache": "cache", "--sandbox": "sandbox"}
_SWITCH_OPTIONS = {
    "--announce-submounts": "announce_submounts",
    "--xattr": "xattr",
    "--posix-acl": "posix_acl",
    "--allow-direct-io": "allow_direct_io",
}
# Flags both daemons take as they are.
_SAME = ("--fd", "--thread-pool-size", "--socket-path", "--socket-group", "--rlimit-nofile")
# The Rust daemon's cache modes the C daemon names differently.
_CACHE_MODES = {"never": "none", "metadata": "auto"}


class UsageError(Exception):
    pass


def translate(args: list[str]) -> list[str]:
    """The C virtiofsd's arguments for the Rust virtiofsd's."""
    out: list[str] = []
    for arg in args:
        flag, has_value, value = arg.partition("=")
        if flag in _VALUE_OPTIONS and has_value:
            if flag == "--cache":
                value = _CACHE_MODES.get(value, value)
            out += ["-o", f"{_VALUE_OPTIONS[flag]}={value}"]
        elif flag in _SWITCH_OPTIONS and not has_value:
            out += ["-o", _SWITCH_OPTIONS[flag]]
        elif flag in _SAME and has_value:
            out.append(arg)
        elif arg == "--syslog":
            # No syslog daemon is assumed: stderr reaches the shim's log instead.
            continue
        elif arg in ("-d", "--debug") or arg == "--log-level=debug":
            out += ["-o", "log_level=debug"]
        elif flag == "--log-level" and has_value:
            out += ["-o", f"log_level={value}"]
        else:
            raise UsageError(f"kata-virtiofsd: unsupported virtiofsd flag {arg!r}")
    if not any(o.startswith("source=") for o in out):
        raise UsageError("kata-virtiofsd: --shared-dir=DIR is required")
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    daemon, is_rust = find()
    if is_rust:
        os.execv(daemon, [str(daemon), *args])
    try:
        translated = translate(args)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    os.execv(daemon, [str(daemon), *translated])


if __name__ == "__main__":
    sys.exit(main())
