"""kata-agent-ctl: call any agent RPC with a JSON body, or run containers with high-level verbs.

Exit codes: 0 success; 1 the agent answered an RPC with an error (its gRPC code name and
message go to stderr); 2 usage error (bad arguments, unknown method, malformed JSON body);
3 the agent could not be reached, the connection was lost, or it answered UNAVAILABLE
(gRPC's "try again later"). `run` and `exec` exit with the process's own exit code
(128+N when killed by signal N) and use 125 for their own failures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from pykata.host.ctl import ops as ops_cmd
from pykata.host.ctl import vm_cmd
from pykata.host.ctl.connect import connect
from pykata.host.ctl.errors import CtlError, ExitCode, UsageError, rpc_exit_code
from pykata.host.ctl.lifecycle import destroy_sandbox, format_ps, stop_container
from pykata.host.ctl.logs import print_console, print_vsock_log
from pykata.host.ctl.methods import METHODS
from pykata.host.ctl.run import ProcessRequest, exec_process, run_container
from pykata.host.ctl.session import open_session
from pykata.host.ctl.state import StateFile
from pykata.host.ctl.target import Target, address_target, vm_target
from pykata.host.ctl.volume import Volume, parse_volume
from pykata.ttrpc.addresses import parse_address
from pykata.ttrpc.errors import TtrpcError

DEFAULT_TIMEOUT = 30.0
EXAMPLES = """examples:
  kata-agent-ctl connect --server-address unix://@agent -c Check -c GetGuestDetails
  kata-agent-ctl connect --server-address hvsock:///run/vm/vsock.sock:1024 \\
      -c 'StatsContainer json://{"container_id": "c1"}'
  kata-agent-ctl vm up demo     # boots build/vmlinuz + build/kata-initrd.img
  kata-agent-ctl run --vm demo ./rootfs -- sh -c 'echo hi; exit 3'
  kata-agent-ctl run --vm demo --volume data.img:/data ./rootfs -- ls /data
  kata-agent-ctl exec --vm demo --tty CONTAINER_ID -- sh
  kata-agent-ctl logs --vm demo -f
  kata-agent-ctl ops status --vm demo      # the VM booted with `vm up --ops-port 1027`
  kata-agent-ctl ops upgrade --vm demo pykata-0.2.0-py3-none-any.whl
"""


def address(text: str) -> str:
    try:
        parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def volume(text: str) -> Volume:
    try:
        return parse_volume(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def directory(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a directory")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kata-agent-ctl",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")

    target = argparse.ArgumentParser(add_help=False)
    choice = target.add_mutually_exclusive_group(required=True)
    choice.add_argument(
        "--server-address",
        type=address,
        help="agent address: unix:///path, unix://@name, vsock://CID:PORT, hvsock:///path:PORT",
    )
    choice.add_argument("--vm", metavar="NAME", help="a VM started by `kata-agent-ctl vm up`")
    target.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds to connect and for each call (reads and waits excepted)",
    )
    process = argparse.ArgumentParser(add_help=False)
    process.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    process.add_argument("-i", "--interactive", action="store_true", help="forward stdin")
    process.add_argument("-e", "--env", action="append", default=[], metavar="NAME=VALUE")
    process.add_argument("-w", "--cwd", default="/", help="working directory in the container")
    process.add_argument("command", nargs="*", help="after --: the command and its arguments")

    cmd = commands.add_parser("connect", parents=[target], help="call RPCs, print JSON replies")
    cmd.add_argument(
        "-c",
        "--cmd",
        action="append",
        default=[],
        dest="commands",
        metavar="'METHOD [json://{...}|file:///path]'",
        help="a method and its request body (protobuf JSON mapping); repeatable",
    )
    cmd.add_argument(
        "--interactive", action="store_true", help="then read more commands from a shell"
    )
    commands.add_parser("methods", help="list the methods `connect` can call")

    cmd = commands.add_parser(
        "run", parents=[target, process], help="run a container on a host folder"
    )
    cmd.add_argument("--id", dest="container_id", help="container id (default: random)")
    cmd.add_argument(
        "-v",
        "--volume",
        dest="volumes",
        action="append",
        default=[],
        type=volume,
        metavar="IMAGE:/path[:ro]",
        help="a raw ext4/xfs image hot-plugged into the VM (needs --vm and `vm up "
        "--hotplug-ports`) and mounted at /path; repeatable",
    )
    cmd.add_argument("rootfs", type=directory, help="host folder to use as the container's root")
    cmd = commands.add_parser(
        "exec", parents=[target, process], help="run a process in a running container"
    )
    cmd.add_argument("container_id")
    commands.add_parser(
        "ps", aliases=["list"], parents=[target], help="containers started by `run`"
    )
    cmd = commands.add_parser("stop", parents=[target], help="SIGTERM, then SIGKILL, remove")
    cmd.add_argument("container_id")
    cmd.add_argument("--time", type=float, default=10.0, help="grace period in seconds")
    commands.add_parser("destroy", parents=[target], help="destroy the sandbox")
    vm_cmd.add_parser(commands)
    ops_cmd.add_parser(commands, target)
    cmd = commands.add_parser("logs", parents=[target], help="the agent's logs")
    source = cmd.add_mutually_exclusive_group()
    source.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    source.add_argument(
        "--vsock-port",
        type=int,
        metavar="PORT",
        help="stream from the agent's log port (guest booted with agent.log_vport=PORT) "
        "instead of the VM's console",
    )
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    # Everything after the first "--" is the container's command, taken verbatim (argparse
    # would drop a second "--" and take the command's own options for ours).
    argv = list(argv)
    tail: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, tail = argv[:split], argv[split + 1 :]
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb in ("run", "exec"):
        args.command = [*args.command, *tail]
        if not args.command:
            parser.error(f"{args.verb}: give the command after --")
        for item in args.env:
            if "=" not in item:
                parser.error(f"--env {item!r}: expected NAME=VALUE")
    elif tail:
        parser.error(f"{args.verb} takes no command after --")
    return args


def process_request(args: argparse.Namespace) -> ProcessRequest:
    return ProcessRequest(
        args=args.command,
        env=args.env,
        cwd=args.cwd,
        terminal=args.tty,
        # A terminal is for typing into: like `docker run -it`, -t implies -i here.
        stdin=args.interactive or args.tty,
    )


async def run_verb(args: argparse.Namespace, target: Target) -> int:
    state_file = StateFile.of(target.name)
    if args.verb in ("ps", "list"):
        print(format_ps(state_file.load()))
        return ExitCode.OK
    if args.verb == "logs":
        if args.vsock_port is not None:
            await print_vsock_log(target.address, args.vsock_port, args.timeout)
        elif target.console_log is None:
            raise UsageError("logs: only a VM target (--vm NAME) has a console log")
        else:
            await print_console(target.console_log, args.follow)
        return ExitCode.OK
    async with open_session(target.address, args.timeout) as session:
        if args.verb == "run":
            return await run_container(
                session,
                target,
                state_file,
                args.rootfs,
                process_request(args),
                args.container_id,
                args.volumes,
            )
        if args.verb == "exec":
            return await exec_process(session, args.container_id, process_request(args))
        if args.verb == "stop":
            await stop_container(session, state_file, args.container_id, args.time)
        elif args.verb == "destroy":
            await destroy_sandbox(session, state_file)
    return ExitCode.OK


def dispatch(args: argparse.Namespace) -> int:
    if args.verb == "methods":
        print("\n".join(sorted(METHODS)))
        return ExitCode.OK
    if args.verb == "vm":
        return run_vm_verb(args)
    if args.verb == "ops":
        return asyncio.run(ops_cmd.run_ops_verb(args))
    target = vm_target(args.vm) if args.vm else address_target(args.server_address)
    if args.verb == "connect":
        return connect(target.address, args.timeout, args.commands, args.interactive)
    return asyncio.run(run_verb(args, target))


def run_vm_verb(args: argparse.Namespace) -> int:
    """`vm up|down|status`; a VM that went down takes the CLI's records of its containers."""
    containers: StateFile | None = None
    if args.vm_verb == "down":
        with contextlib.suppress(UsageError):  # no such VM: the handler says so
            containers = StateFile.of(vm_target(args.name).name)
    code = int(args.vm_handler(args))
    if containers is not None and code == ExitCode.OK:
        containers.remove()  # what `run` recorded died with the VM
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # Failures of run/exec themselves must not look like the command's own exit code.
    streams = args.verb in ("run", "exec")
    try:
        return dispatch(args)
    except CtlError as exc:
        print(f"kata-agent-ctl: {exc}", file=sys.stderr)
        return ExitCode.RUN_FAILED if streams else exc.exit_code
    except TtrpcError as exc:
        print(f"kata-agent-ctl: {exc}", file=sys.stderr)
        return ExitCode.RUN_FAILED if streams else rpc_exit_code(exc)
    except KeyboardInterrupt:
        # How `logs -f` and the log stream end; elsewhere the shell's usual 128+SIGINT.
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
