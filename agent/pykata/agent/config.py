"""Agent configuration: kernel command line, environment and an optional TOML file.

Names, defaults and precedence follow the Kata agent:

- ``--config FILE`` (or ``agent.config_file=FILE`` on the command line) makes the TOML file
  the whole configuration; the other ``agent.*`` parameters are then ignored;
- otherwise the ``agent.*`` kernel parameters apply;
- ``KATA_AGENT_SERVER_ADDR``, ``KATA_AGENT_LOG_LEVEL``, ``KATA_AGENT_TRACING`` and
  ``KATA_AGENT_OPS_ADDR`` (our ops channel on any address, e.g. a unix socket) override
  either (Kata skips the environment for ``agent.config_file``; we apply it in both cases so
  tests can always point the agent at their own socket).

Unlike Kata, a malformed value never aborts start-up: the default is kept and the problem is
recorded in :attr:`AgentConfig.warnings`, logged once logging is up (PID 1 must not die).

Deliberate difference: cgroup v2 is the default layout (``unified_cgroup_hierarchy`` defaults
to true); ``systemd.unified_cgroup_hierarchy=0`` asks for v1 hierarchies.

Where the command line comes from is decided by the caller (see :func:`cmdline_source`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

DEFAULT_SERVER_ADDR = "vsock://-1:1024"
TRACE = 5  # below logging.DEBUG, Kata's "trace"

# logrus level names, as Kata accepts them, mapped to stdlib logging levels.
LOG_LEVELS: dict[str, int] = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
}


@dataclass
class AgentConfig:
    debug_console: bool = False
    dev_mode: bool = False
    log_level: int = logging.INFO
    hotplug_timeout: float = 3.0
    cdh_api_timeout: float = 50.0
    launch_process_timeout: float = 6.0
    debug_console_vport: int = 0
    log_vport: int = 0
    container_pipe_size: int = 0
    server_addr: str = DEFAULT_SERVER_ADDR
    cgroup_no_v1: str = ""
    unified_cgroup_hierarchy: bool = True
    tracing: bool = False
    # The ops channel (docs/ops.md): off unless a vsock port or an address is given.
    ops_vport: int = 0
    ops_server_addr: str = ""
    # Problems met while parsing: logged after logging is configured, never fatal.
    warnings: list[str] = field(default_factory=list, compare=False, repr=False)

    @property
    def cgroup_v2(self) -> bool:
        return self.unified_cgroup_hierarchy or self.cgroup_no_v1 == "all"

    @property
    def ops_address(self) -> str:
        """Where the ops server listens; empty: no ops channel."""
        if self.ops_server_addr:
            return self.ops_server_addr
        return f"vsock://-1:{self.ops_vport}" if self.ops_vport else ""

    def public(self) -> dict[str, Any]:
        """The settings as plain values (for the announce record)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "warnings"}
        out["log_level"] = next(
            (name for name, level in LOG_LEVELS.items() if level == self.log_level),
            str(self.log_level),
        )
        return out


def parse_bool(value: str) -> bool:
    """Kata's flag parsing: true/false, else an integer (non-zero = true), else false."""
    if value in ("true", "false"):
        return value == "true"
    try:
        return int(value) != 0
    except ValueError:
        return False


def parse_log_level(value: str) -> int:
    try:
        return LOG_LEVELS[value]
    except KeyError:
        raise ValueError(f"invalid log level {value!r}") from None


def parse_timeout(value: str) -> float:
    seconds = int(value)
    if seconds <= 0:
        raise ValueError("timeout must be a positive number of seconds")
    return float(seconds)


def parse_port(value: str) -> int:
    port = int(value)
    if port <= 0:
        raise ValueError("vsock port must be positive")
    return port


def parse_pipe_size(value: str) -> int:
    size = int(value)
    if size < 0:
        raise ValueError("container pipe size should not be negative")
    return size


def parse_string(value: str) -> str:
    if not value:
        raise ValueError("missing value")
    return value


def parse_cgroup_no_v1(value: str) -> str:
    # Kata only records the value when it is "all"; anything else leaves v1 enabled.
    if value != "all":
        raise ValueError(f"only 'all' is meaningful, got {value!r}")
    return value


# kernel parameter -> (field, parser)
CMDLINE_OPTIONS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "agent.log": ("log_level", parse_log_level),
    "agent.server_addr": ("server_addr", parse_string),
    "agent.hotplug_timeout": ("hotplug_timeout", parse_timeout),
    "agent.cdh_api_timeout": ("cdh_api_timeout", parse_timeout),
    "agent.launch_process_timeout": ("launch_process_timeout", parse_timeout),
    "agent.debug_console_vport": ("debug_console_vport", parse_port),
    "agent.log_vport": ("log_vport", parse_port),
    "agent.ops_vport": ("ops_vport", parse_port),
    "agent.container_pipe_size": ("container_pipe_size", parse_pipe_size),
    "agent.trace": ("tracing", parse_bool),
    "cgroup_no_v1": ("cgroup_no_v1", parse_cgroup_no_v1),
    "systemd.unified_cgroup_hierarchy": ("unified_cgroup_hierarchy", parse_bool),
}
CMDLINE_FLAGS: dict[str, str] = {
    "agent.debug_console": "debug_console",
    "agent.devmode": "dev_mode",
    "agent.trace": "tracing",
}
CONFIG_FILE_OPTION = "agent.config_file"

ENV_SERVER_ADDR = "KATA_AGENT_SERVER_ADDR"
ENV_LOG_LEVEL = "KATA_AGENT_LOG_LEVEL"
ENV_TRACING = "KATA_AGENT_TRACING"
ENV_OPS_ADDR = "KATA_AGENT_OPS_ADDR"


def in_guest(is_pid1: bool, environ: Mapping[str, str]) -> bool:
    """Whether the agent runs as a guest's agent: PID 1 (initrd) or a systemd service
    (systemd sets INVOCATION_ID for every unit). Started any other way, it runs on a
    development host or under tests, where the host's own settings must stay untouched."""
    return is_pid1 or "INVOCATION_ID" in environ


def cmdline_source(is_pid1: bool, environ: Mapping[str, str]) -> str | None:
    """Which kernel command line applies to this agent, if any (only a guest's)."""
    return "/proc/cmdline" if in_guest(is_pid1, environ) else None


def parse_cmdline(text: str, config: AgentConfig) -> str | None:
    """Apply ``agent.*`` kernel parameters to ``config``; returns agent.config_file if set."""
    for param in text.split():
        if param in CMDLINE_FLAGS:
            setattr(config, CMDLINE_FLAGS[param], True)
            continue
        name, sep, value = param.partition("=")
        if not sep:
            continue
        if name == CONFIG_FILE_OPTION:
            if value:
                return value
            config.warnings.append(f"{param}: missing value, ignored")
            continue
        option = CMDLINE_OPTIONS.get(name)
        if option is None:
            continue
        attr, parse = option
        try:
            setattr(config, attr, parse(value))
        except ValueError as exc:
            config.warnings.append(f"{param}: {exc}; keeping {getattr(config, attr)!r}")
    return None


def _toml_duration(value: Any) -> float:
    # serde's Duration is a {secs, nanos} table; plain numbers of seconds are accepted too.
    if isinstance(value, dict) and set(value) <= {"secs", "nanos"}:
        secs, nanos = value.get("secs", 0), value.get("nanos", 0)
        if isinstance(secs, int) and isinstance(nanos, int):
            value = secs + nanos / 1e9
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"expected a positive duration, got {value!r}")
    return float(value)


def _toml_typed(kind: type) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if type(value) is not kind:
            raise ValueError(f"expected {kind.__name__}, got {value!r}")
        return value

    return check


TOML_KEYS: dict[str, Callable[[Any], Any]] = {
    "debug_console": _toml_typed(bool),
    "dev_mode": _toml_typed(bool),
    "log_level": lambda v: parse_log_level(_toml_typed(str)(v)),
    "hotplug_timeout": _toml_duration,
    "cdh_api_timeout": _toml_duration,
    "launch_process_timeout": _toml_duration,
    "debug_console_vport": lambda v: parse_port(str(_toml_typed(int)(v))),
    "log_vport": lambda v: parse_port(str(_toml_typed(int)(v))),
    "ops_vport": lambda v: parse_port(str(_toml_typed(int)(v))),
    "ops_server_addr": lambda v: parse_string(_toml_typed(str)(v)),
    "container_pipe_size": lambda v: parse_pipe_size(str(_toml_typed(int)(v))),
    "server_addr": lambda v: parse_string(_toml_typed(str)(v)),
    "unified_cgroup_hierarchy": _toml_typed(bool),
    "tracing": _toml_typed(bool),
}


def parse_toml(text: str, config: AgentConfig, origin: str) -> None:
    import tomllib  # only with a config file; most guests are configured on the command line

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        config.warnings.append(f"{origin}: not valid TOML ({exc}); using defaults")
        return
    for key, value in doc.items():
        check = TOML_KEYS.get(key)
        if check is None:
            config.warnings.append(f"{origin}: unknown key {key!r} ignored")
            continue
        try:
            setattr(config, key, check(value))
        except ValueError as exc:
            config.warnings.append(f"{origin}: {key}: {exc}; keeping {getattr(config, key)!r}")


def apply_env(config: AgentConfig, environ: Mapping[str, str]) -> None:
    if ENV_SERVER_ADDR in environ:
        config.server_addr = environ[ENV_SERVER_ADDR]
    if ENV_LOG_LEVEL in environ:
        try:
            config.log_level = parse_log_level(environ[ENV_LOG_LEVEL])
        except ValueError as exc:
            config.warnings.append(f"{ENV_LOG_LEVEL}: {exc}; keeping the configured level")
    if ENV_TRACING in environ:
        config.tracing = parse_bool(environ[ENV_TRACING])
    if environ.get(ENV_OPS_ADDR):
        config.ops_server_addr = environ[ENV_OPS_ADDR]


def _read(path: str, config: AgentConfig) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError as exc:
        config.warnings.append(f"cannot read {path}: {exc.strerror}")
        return None


def load(
    *,
    cmdline_path: str | None,
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> AgentConfig:
    """Build the configuration from the given sources; never raises for bad input."""
    config = AgentConfig()
    env = os.environ if environ is None else environ
    if config_file is None and cmdline_path is not None:
        text = _read(cmdline_path, config)
        if text is not None:
            config_file = parse_cmdline(text, config)
            if config_file is not None:
                # As Kata: the file replaces whatever the command line said.
                warnings = config.warnings
                config = AgentConfig(warnings=warnings)
    if config_file is not None:
        text = _read(config_file, config)
        if text is not None:
            parse_toml(text, config, config_file)
    apply_env(config, env)
    return config
