"""kata-agent command-line options (Kata's: --version/-v, --config/-c FILE)."""

from __future__ import annotations

import pytest

from pykata.agent.main import UsageError, main, parse_args


def test_parse_args() -> None:
    assert parse_args([]) == (None, None)
    assert parse_args(["-v"]) == ("version", None)
    assert parse_args(["--config", "/etc/agent.toml"]) == (None, "/etc/agent.toml")
    assert parse_args(["-c", "a.toml", "--version"]) == ("version", "a.toml")
    assert parse_args(["--config=b.toml"]) == (None, "b.toml")
    assert parse_args(["--self-check"]) == ("self-check", None)


@pytest.mark.parametrize("argv", [["--config"], ["init"], ["--frobnicate"]])
def test_bad_args(argv: list[str]) -> None:
    with pytest.raises(UsageError):
        parse_args(argv)


def test_version_and_usage_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert "kata-agent version" in capsys.readouterr().out
    assert main(["--nope"]) == 2
    assert "usage: kata-agent" in capsys.readouterr().err
