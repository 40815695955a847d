"""Agent configuration: kernel command line, TOML file, environment, bad values."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pykata.agent import config
from pykata.agent.config import TRACE, AgentConfig


def load_cmdline(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> AgentConfig:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(text)
    return config.load(cmdline_path=str(cmdline), environ=env or {})


def test_defaults_without_any_source() -> None:
    cfg = config.load(cmdline_path=None, environ={})
    assert cfg == AgentConfig()
    assert cfg.server_addr == "vsock://-1:1024"
    assert cfg.log_level == logging.INFO
    assert cfg.hotplug_timeout == 3.0
    assert cfg.container_pipe_size == 0
    assert cfg.cgroup_v2
    assert cfg.warnings == []


def test_kernel_parameters(tmp_path: Path) -> None:
    cfg = load_cmdline(
        tmp_path,
        "console=ttyS0 quiet agent.log=debug agent.server_addr=vsock://-1:2048 "
        "agent.hotplug_timeout=10 agent.debug_console agent.debug_console_vport=1026 "
        "agent.log_vport=1025 agent.container_pipe_size=65536 agent.devmode "
        "systemd.unified_cgroup_hierarchy=0\n",
    )
    assert cfg.log_level == logging.DEBUG
    assert cfg.server_addr == "vsock://-1:2048"
    assert cfg.hotplug_timeout == 10.0
    assert cfg.debug_console and cfg.dev_mode
    assert (cfg.debug_console_vport, cfg.log_vport) == (1026, 1025)
    assert cfg.container_pipe_size == 65536
    assert not cfg.unified_cgroup_hierarchy and not cfg.cgroup_v2
    assert cfg.warnings == []


def test_cgroup_no_v1_all_means_v2(tmp_path: Path) -> None:
    cfg = load_cmdline(tmp_path, "systemd.unified_cgroup_hierarchy=0 cgroup_no_v1=all")
    assert cfg.cgroup_v2


@pytest.mark.parametrize(
    ("param", "attr", "default"),
    [
        ("agent.log=loud", "log_level", logging.INFO),
        ("agent.hotplug_timeout=soon", "hotplug_timeout", 3.0),
        ("agent.hotplug_timeout=0", "hotplug_timeout", 3.0),
        ("agent.log_vport=-3", "log_vport", 0),
        ("agent.debug_console_vport=x", "debug_console_vport", 0),
        ("agent.container_pipe_size=-1", "container_pipe_size", 0),
        ("agent.server_addr=", "server_addr", "vsock://-1:1024"),
    ],
)
def test_malformed_value_keeps_default_and_warns(
    tmp_path: Path, param: str, attr: str, default: object
) -> None:
    cfg = load_cmdline(tmp_path, f"agent.log_vport=1025 {param}")
    assert getattr(cfg, attr) == (1025 if attr == "log_vport" else default)
    assert len(cfg.warnings) == 1
    assert param.split("=")[0] in cfg.warnings[0]


def test_lookalike_parameters_are_ignored(tmp_path: Path) -> None:
    cfg = load_cmdline(tmp_path, "agent.logx=debug agent.debug_consolex foo agent bar=1")
    assert cfg == AgentConfig()


def test_flag_value_forms(tmp_path: Path) -> None:
    assert load_cmdline(tmp_path, "agent.trace=true").tracing
    assert load_cmdline(tmp_path, "agent.trace=1").tracing
    assert not load_cmdline(tmp_path, "agent.trace=0").tracing
    assert not load_cmdline(tmp_path, "agent.trace=nope").tracing


def test_environment_overrides_cmdline(tmp_path: Path) -> None:
    cfg = load_cmdline(
        tmp_path,
        "agent.log=debug agent.server_addr=vsock://-1:9",
        {"KATA_AGENT_SERVER_ADDR": "unix:///tmp/a.sock", "KATA_AGENT_LOG_LEVEL": "trace"},
    )
    assert cfg.server_addr == "unix:///tmp/a.sock"
    assert cfg.log_level == TRACE


def test_bad_env_log_level_keeps_configured(tmp_path: Path) -> None:
    cfg = load_cmdline(tmp_path, "agent.log=error", {"KATA_AGENT_LOG_LEVEL": "chatty"})
    assert cfg.log_level == logging.ERROR
    assert cfg.warnings


def test_config_file_from_cmdline_replaces_other_parameters(tmp_path: Path) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text(
        'log_level = "warn"\nserver_addr = "vsock://-1:3000"\ndebug_console = true\n'
        "hotplug_timeout = { secs = 7, nanos = 0 }\ncontainer_pipe_size = 4096\n"
    )
    cfg = load_cmdline(tmp_path, f"agent.log=debug agent.config_file={toml} agent.log_vport=9")
    assert cfg.log_level == logging.WARNING
    assert cfg.server_addr == "vsock://-1:3000"
    assert cfg.debug_console
    assert cfg.hotplug_timeout == 7.0
    assert cfg.container_pipe_size == 4096
    assert cfg.log_vport == 0  # the file is the whole configuration


def test_config_file_argument_then_env(tmp_path: Path) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text("dev_mode = true\nserver_addr = 'unix:///tmp/ignored.socket'\n")
    cfg = config.load(
        cmdline_path=None,
        config_file=str(toml),
        environ={"KATA_AGENT_SERVER_ADDR": "unix:///tmp/overwrite.socket"},
    )
    assert cfg.dev_mode
    assert cfg.server_addr == "unix:///tmp/overwrite.socket"


def test_bad_toml_values_are_reported_not_fatal(tmp_path: Path) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text('log_level = 3\nhotplug_timeout = -1\nfrobnicate = true\ntracing = "yes"\n')
    cfg = config.load(cmdline_path=None, config_file=str(toml), environ={})
    assert cfg == AgentConfig()
    assert len(cfg.warnings) == 4


def test_unparsable_or_missing_files_are_reported(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("this is = = not toml")
    assert config.load(cmdline_path=None, config_file=str(broken), environ={}).warnings
    missing = config.load(cmdline_path=str(tmp_path / "nope"), environ={})
    assert missing == AgentConfig() and missing.warnings


def test_in_guest() -> None:
    assert config.in_guest(True, {})
    assert config.in_guest(False, {"INVOCATION_ID": "0123"})
    assert not config.in_guest(False, {"PATH": "/bin"})


def test_cmdline_source() -> None:
    assert config.cmdline_source(True, {}) == "/proc/cmdline"
    assert config.cmdline_source(False, {"INVOCATION_ID": "abc"}) == "/proc/cmdline"
    assert config.cmdline_source(False, {}) is None


def test_public_view_names_the_level() -> None:
    public = AgentConfig(log_level=logging.DEBUG).public()
    assert public["log_level"] == "debug"
    assert "warnings" not in public


def test_ops_channel_is_off_by_default_and_on_with_a_port_or_an_address(tmp_path: Path) -> None:
    assert config.load(cmdline_path=None, environ={}).ops_address == ""
    assert load_cmdline(tmp_path, "agent.ops_vport=1027").ops_address == "vsock://-1:1027"
    bad = load_cmdline(tmp_path, "agent.ops_vport=0")
    assert bad.ops_address == "" and "agent.ops_vport=0" in bad.warnings[0]
    env = {"KATA_AGENT_OPS_ADDR": "unix://@ops"}
    assert load_cmdline(tmp_path, "agent.ops_vport=1027", env).ops_address == "unix://@ops"
    toml = tmp_path / "agent.toml"
    toml.write_text("ops_vport = 2000\n")
    assert config.load(cmdline_path=None, config_file=str(toml), environ={}).ops_vport == 2000
