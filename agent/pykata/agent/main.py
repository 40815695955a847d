"""The kata-agent command: configuration, logging, init duties, then the run loop
(daemon.py) serves the agent API until DestroySandbox (then power off as PID 1, exit otherwise).

As PID 1 nothing may escape: an unexpected error is logged and the VM is powered off on
purpose instead of letting the kernel panic on a dead init.

This module stays light; the run loop (asyncio and everything on top) is imported once
the OpenSSL bindings are blocked: asyncio imports ``ssl`` eagerly and ``hashlib`` prefers
``_hashlib``, together ~5 MB of RSS for a daemon that never speaks TLS (hashlib falls back to
its built-in implementations).
"""

from __future__ import annotations

import contextlib
import os
import sys
from types import ModuleType

from pykata.agent import bootclock, lazyimport, log, pid1
from pykata.agent import config as agent_config
from pykata.agent.config import AgentConfig
from pykata.agent.version import API_VERSION, VERSION

logger = log.get("main")

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OPENSSL_MODULES = ("ssl", "_hashlib")
# shutil imports these for its archive functions, which the agent never calls: 0.3 MiB.
COMPRESSION_MODULES = ("bz2", "lzma")
# protobuf's descriptor_pool and builder import its pure-Python message implementation (with
# text_format, encoder, decoder...) even when upb does all the work: 1.2 MiB until used.
DEFERRED_MODULES = ("google.protobuf.internal.python_message",)
# Loaded later or only on demand (AgentService once listening; the ops channel and the
# upgrade when configured): the self-check imports them too.
LAZY_MODULES = (
    "pykata.agent.rpc.agent_service",
    "pykata.agent.rpc.ops",
    "pykata.agent.upgrade.manager",
    "pykata.agent.upgrade.restore",
    "pykata.agent.upgrade.switch",
)
USAGE = "usage: kata-agent [--version|-v] [--self-check] [--config|-c FILE]"


class UsageError(Exception):
    pass


def parse_args(argv: list[str]) -> tuple[str | None, str | None]:
    """(what to show instead of serving: "version", "self-check" or None, config file) from
    Kata's command-line options and ours."""
    show = None
    config = None
    args = iter(argv)
    for arg in args:
        if arg in ("--version", "-v"):
            show = "version"
        elif arg == "--self-check":
            show = "self-check"
        elif arg in ("--config", "-c"):
            config = next(args, None)
            if config is None:
                raise UsageError(f"{arg} needs a file")
        elif arg.startswith("--config="):
            config = arg.removeprefix("--config=")
        else:
            raise UsageError(f"unknown argument {arg!r}")
    return show, config


def announce(config: AgentConfig) -> None:
    logger.info(
        "announce",
        extra={
            "agent-version": VERSION,
            "api-version": API_VERSION,
            "agent-type": "python",
            "init-daemon": pid1.is_pid1(),
            "config": config.public(),
            "uptime": bootclock.uptime(),
            # Only PID 1 was exec'd by the kernel: elsewhere the record is the host's.
            "exec-uptime": bootclock.exec_uptime() if pid1.is_pid1() else None,
        },
    )


def serving_module() -> ModuleType:
    for unused in (*OPENSSL_MODULES, *COMPRESSION_MODULES):
        sys.modules.setdefault(unused, None)  # type: ignore[arg-type]
    for name in DEFERRED_MODULES:
        lazyimport.defer(name)
    from pykata.agent import daemon

    return daemon


def self_check(config_file: str | None) -> int:
    """What an upgrade runs before switching to this code: everything the agent serves with
    imports, the configuration loads; prints the versions and the state formats it reads."""
    import importlib
    import json

    serving_module()
    for module in LAZY_MODULES:
        importlib.import_module(module)
    from pykata.agent.upgrade import package, state

    config = agent_config.load(cmdline_path=None, config_file=config_file)
    report = {
        "version": VERSION,
        "api_version": API_VERSION,
        "state_formats": list(state.READABLE),
        "code": str(package.running_code()),
        "config_warnings": config.warnings,
    }
    print(json.dumps(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        show, config_file = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        print(f"{exc}\n{USAGE}", file=sys.stderr)
        return 2
    if show == "version":
        print(f"kata-agent version {VERSION} (api version: {API_VERSION}, type: python)")
        return 0
    if show == "self-check":
        return self_check(config_file)
    is_init = pid1.is_pid1()
    if is_init:
        os.environ.setdefault("PATH", DEFAULT_PATH)
        # /proc must be there before the command line can be read.
        with contextlib.suppress(Exception):
            pid1.mount_base()
        with contextlib.suppress(Exception):
            pid1.ensure_console()
    config = agent_config.load(
        cmdline_path=agent_config.cmdline_source(is_init, os.environ), config_file=config_file
    )
    log.setup(config.log_level, log_vport=config.log_vport)
    announce(config)
    for warning in config.warnings:
        logger.warning("configuration problem", extra={"problem": warning})
    if not is_init:
        pid1.set_child_subreaper()
        return int(serving_module().run(config))
    try:
        # Kernel modules load while the agent imports itself and starts listening (it retries
        # until the vsock transport is there); AgentService waits for them (daemon.serve).
        loading = pid1.init(config.cgroup_v2)
        serving_module().run(config, modules=loading)
    except BaseException:
        logger.exception("init failed")
    pid1.power_off()


if __name__ == "__main__":
    sys.exit(main())
