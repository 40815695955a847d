"""kata-agent-ctl: argument parsing, method table, request bodies, exit code mapping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import json_format
from hypothesis import given
from hypothesis import strategies as st

from pykata.host.ctl.body import format_response, parse_command
from pykata.host.ctl.errors import ExitCode, UsageError, rpc_exit_code
from pykata.host.ctl.main import main, parse_args
from pykata.host.ctl.methods import METHODS
from pykata.protocols import agent_pb2, health_pb2
from pykata.ttrpc.errors import Code, NotFound, TtrpcError, Unavailable, error_for_status


def test_method_table_covers_every_rpc_of_both_services() -> None:
    expected = {
        (service.full_name, method.name, method.input_type.full_name, method.output_type.full_name)
        for module, name in ((agent_pb2, "AgentService"), (health_pb2, "Health"))
        for service in [module.DESCRIPTOR.services_by_name[name]]
        for method in service.methods
    }
    table = {
        (
            m.service,
            m.name,
            m.request_type.DESCRIPTOR.full_name,
            m.response_type.DESCRIPTOR.full_name,
        )
        for m in METHODS.values()
    }
    assert table == expected
    assert {"Check", "Version", "CreateContainer", "GetOOMEvent"} <= set(METHODS)


def test_command_without_body_is_a_default_request() -> None:
    method, request = parse_command("GetGuestDetails")
    assert method.service == "grpc.AgentService"
    assert request == agent_pb2.GuestDetailsRequest()


def test_json_body_uses_the_protobuf_json_mapping() -> None:
    method, request = parse_command(
        'CreateContainer json://{"container_id": "c1", "OCI": {"Process": {"Args": ["sh"]}}}'
    )
    assert method.name == "CreateContainer"
    assert isinstance(request, agent_pb2.CreateContainerRequest)
    assert request.container_id == "c1"
    assert list(request.OCI.Process.Args) == ["sh"]
    # lowerCamelCase names are accepted too, as json_format does.
    _, request = parse_command('GetGuestDetails json://{"memBlockSize": true}')
    assert request == agent_pb2.GuestDetailsRequest(mem_block_size=True)


def test_file_body(tmp_path: Path) -> None:
    body = tmp_path / "req.json"
    body.write_text(json.dumps({"container_id": "c2", "signal": 9}))
    _, request = parse_command(f"SignalProcess file://{body}")
    assert request == agent_pb2.SignalProcessRequest(container_id="c2", signal=9)


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("", "empty command"),
        ("check", "unknown method 'check'"),
        ("NoSuchMethod", "unknown method"),
        ("Check {}", "must start with json:// or file://"),
        ("Check json://{", "bad JSON body for Check"),
        ('SignalProcess json://{"signal": "nine"}', "bad JSON body for SignalProcess"),
        ('Check json://{"no_such_field": 1}', "bad JSON body for Check"),
        ("Check file:///nonexistent/req.json", "cannot read body file"),
    ],
)
def test_bad_commands_are_usage_errors(command: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_command(command)


@given(st.text(max_size=60))
def test_any_json_text_either_parses_or_is_a_usage_error(text: str) -> None:
    try:
        _, request = parse_command(f"ExecProcess json://{text}")
    except UsageError:
        return
    assert isinstance(request, agent_pb2.ExecProcessRequest)


def test_response_json_round_trips() -> None:
    response = agent_pb2.WaitProcessResponse(status=3)
    text = format_response(response)
    assert json.loads(text) == {"status": 3}
    assert json_format.Parse(text, agent_pb2.WaitProcessResponse()) == response
    # Fields at their default value are shown: a script can read "status": 0.
    assert json.loads(format_response(agent_pb2.WaitProcessResponse())) == {"status": 0}


def test_rpc_error_exit_codes() -> None:
    # The documented numbers scripts rely on.
    documented = (ExitCode.OK, ExitCode.RPC_ERROR, ExitCode.USAGE, ExitCode.CONNECTION)
    assert [int(code) for code in documented] == [0, 1, 2, 3]
    assert rpc_exit_code(NotFound("x")) == ExitCode.RPC_ERROR
    assert rpc_exit_code(Unavailable("connection lost")) == ExitCode.CONNECTION
    for code in Code:
        if code not in (Code.OK, Code.UNAVAILABLE):
            error = error_for_status(code, "m")
            assert isinstance(error, TtrpcError)
            assert rpc_exit_code(error) == ExitCode.RPC_ERROR


def test_run_takes_everything_after_the_double_dash_verbatim(tmp_path: Path) -> None:
    args = parse_args(
        ["run", "--server-address", "unix://@a", "-t", str(tmp_path), "--", "sh", "-c", "--", "x"]
    )
    assert args.verb == "run"
    assert args.tty and not args.interactive
    assert args.rootfs == tmp_path
    assert args.command == ["sh", "-c", "--", "x"]
    args = parse_args(["exec", "--server-address", "vsock://3:1024", "c1", "--", "ls", "-l"])
    assert (args.container_id, args.command) == ("c1", ["ls", "-l"])


def test_connect_collects_commands() -> None:
    args = parse_args(
        [
            "connect",
            "--server-address",
            "hvsock:///r/v.sock:1024",
            "-c",
            "Check",
            "--cmd",
            "Version",
        ]
    )
    assert args.commands == ["Check", "Version"]
    assert args.timeout > 0 and not args.interactive


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["connect", "-c", "Check"],  # no address
        ["connect", "--server-address", "tcp://1.2.3.4:5", "-c", "Check"],
        ["connect", "--server-address", "vsock://x:1024", "-c", "Check"],
        ["run", "--server-address", "unix://@a", "/nonexistent-rootfs", "--", "true"],
        ["run", "--server-address", "unix://@a", "/"],  # no command
        ["ps", "--server-address", "unix://@a", "--", "x"],
        ["exec", "--server-address", "unix://@a", "-e", "NOVALUE", "c1", "--", "true"],
        ["ps", "--server-address", "unix://@a", "--vm", "v"],  # one target only
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == ExitCode.USAGE
    assert "usage:" in capsys.readouterr().err


def test_unknown_method_exits_2_before_connecting(capsys: pytest.CaptureFixture[str]) -> None:
    # Nothing listens on this address: the command must fail on the method name first.
    code = main(["connect", "--server-address", "unix://@pykata-ctl-nobody", "-c", "Bogus"])
    assert code == ExitCode.USAGE
    assert "unknown method 'Bogus'" in capsys.readouterr().err


def test_methods_lists_every_method(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["methods"]) == ExitCode.OK
    assert capsys.readouterr().out.split() == sorted(METHODS)
