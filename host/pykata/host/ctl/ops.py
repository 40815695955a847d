"""`kata-agent-ctl ops …`: the agent's ops channel (pykata.ops.v1.Ops, docs/ops.md): status,
log level, state dump, and the hot upgrade (upload in chunks, then wait for the outcome)."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from pykata.host.ctl.errors import ExitCode, UsageError
from pykata.host.ctl.session import open_session
from pykata.host.vm import state as vm_state
from pykata.protocols import ops_pb2
from pykata.ttrpc import Client

OPS_SERVICE = ops_pb2.DESCRIPTOR.services_by_name["Ops"]
CHUNK = 1 << 20
# Phases an upgrade passes through; any other is where it ended.
IN_PROGRESS = ("receiving", "checking", "switching")
POLL_INTERVAL = 0.05


class UpgradeFailed(Exception):
    def __init__(self, status: ops_pb2.UpgradeStatusResponse) -> None:
        super().__init__(f"upgrade {status.phase}: {status.message}")
        self.status = status


def ops_stub(client: Client) -> Any:
    return client.stub(OPS_SERVICE)


async def send_upgrade(
    ops: Any,
    artifact: bytes,
    *,
    ready_timeout: float = 0,
    chunk: int = CHUNK,
    call_timeout: float | None = 120.0,
) -> ops_pb2.UpgradeStatusResponse:
    """Stream the artifact in chunks, the last one committing; the agent's answer to the
    commit (phase "switching" once the new code passed its self-check)."""
    digest = hashlib.sha256(artifact).hexdigest()
    offset = 0
    while True:
        data = artifact[offset : offset + chunk]
        last = offset + len(data) >= len(artifact)
        request = ops_pb2.UpgradeRequest(
            sha256=digest,
            size=len(artifact),
            offset=offset,
            data=data,
            commit=last,
            ready_timeout_seconds=int(ready_timeout),
        )
        status: ops_pb2.UpgradeStatusResponse = await ops.Upgrade(request, timeout=call_timeout)
        offset += len(data)
        if last:
            return status


async def send_upgrade_path(
    ops: Any, guest_path: str, sha256: str, *, ready_timeout: float = 0
) -> ops_pb2.UpgradeStatusResponse:
    """Upgrade from a file the guest can read (e.g. on the virtio-fs share)."""
    request = ops_pb2.UpgradeRequest(
        sha256=sha256, path=guest_path, commit=True, ready_timeout_seconds=int(ready_timeout)
    )
    result: ops_pb2.UpgradeStatusResponse = await ops.Upgrade(request, timeout=120.0)
    return result


async def wait_outcome(ops: Any, within: float) -> ops_pb2.UpgradeStatusResponse:
    """Poll UpgradeStatus on the same connection (the agent hands it over) until the upgrade
    is done, rolled back or failed. A poll sent during the switch is answered by the new
    agent."""
    deadline = time.monotonic() + within
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"upgrade not finished within {within:g}s")
        status: ops_pb2.UpgradeStatusResponse = await ops.UpgradeStatus(
            ops_pb2.UpgradeStatusRequest(), timeout=left
        )
        if status.phase not in IN_PROGRESS:
            return status
        await asyncio.sleep(POLL_INTERVAL)


async def upgrade(
    ops: Any, artifact: Path, *, guest_path: str = "", ready_timeout: float = 0, within: float
) -> ops_pb2.UpgradeStatusResponse:
    """The whole upgrade; UpgradeFailed unless it ended "done"."""
    data = await asyncio.to_thread(artifact.read_bytes)
    if guest_path:
        digest = hashlib.sha256(data).hexdigest()
        await send_upgrade_path(ops, guest_path, digest, ready_timeout=ready_timeout)
    else:
        await send_upgrade(ops, data, ready_timeout=ready_timeout)
    status = await wait_outcome(ops, within)
    if status.phase != "done":
        raise UpgradeFailed(status)
    return status


VERBS = ("status", "log-level", "dump-state", "upgrade", "upgrade-status")


def add_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    target: argparse.ArgumentParser,
) -> None:
    """``ops VERB``; ``target``: the shared --server-address/--vm/--timeout options (the
    address is the ops channel's, e.g. hvsock:///…/vsock.sock:1027)."""
    ops = subparsers.add_parser("ops", help="the agent's ops channel (docs/ops.md)")
    verbs = ops.add_subparsers(dest="ops_verb", required=True, metavar="VERB")
    verbs.add_parser("status", parents=[target], help="version, uptime, RSS, containers")
    cmd = verbs.add_parser("log-level", parents=[target], help="change the agent's log level")
    cmd.add_argument("level", help="trace, debug, info, warn, error, critical")
    verbs.add_parser("dump-state", parents=[target], help="the agent's whole state as JSON")
    verbs.add_parser("upgrade-status", parents=[target], help="the last upgrade's outcome")
    cmd = verbs.add_parser(
        "upgrade", parents=[target], help="replace the running agent, containers kept"
    )
    cmd.add_argument("artifact", type=Path, help="the new agent: a wheel (or zip) of pykata")
    cmd.add_argument(
        "--guest-path",
        default="",
        help="the agent reads the artifact from this guest path (e.g. on the shared folder) "
        "instead of receiving it in chunks",
    )
    cmd.add_argument(
        "--ready-timeout",
        type=float,
        default=0,
        help="seconds the new agent has to be ready before the old one is restored (0: 60)",
    )


def ops_address(args: argparse.Namespace) -> str:
    if args.server_address:
        return str(args.server_address)
    try:
        address = vm_state.load(args.vm).ops_address
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(f"no running VM {args.vm!r}: {exc}") from None
    if not address:
        raise UsageError(f"VM {args.vm} has no ops channel: start it with `vm up --ops-port P`")
    return address


def _print(message: Any) -> None:
    print(json_format.MessageToJson(message, preserving_proto_field_name=True, indent=2))


async def run_ops_verb(args: argparse.Namespace) -> int:
    timeout = args.timeout
    async with open_session(ops_address(args), timeout) as session:
        ops = ops_stub(session.client)
        if args.ops_verb == "status":
            _print(await ops.Status(ops_pb2.StatusRequest(), timeout=timeout))
        elif args.ops_verb == "log-level":
            request = ops_pb2.SetLogLevelRequest(level=args.level)
            _print(await ops.SetLogLevel(request, timeout=timeout))
        elif args.ops_verb == "dump-state":
            dump = await ops.DumpState(ops_pb2.DumpStateRequest(), timeout=timeout)
            print(json.dumps(json.loads(dump.json), indent=2))
        elif args.ops_verb == "upgrade-status":
            _print(await ops.UpgradeStatus(ops_pb2.UpgradeStatusRequest(), timeout=timeout))
        else:
            return await _upgrade(ops, args)
    return ExitCode.OK


async def _upgrade(ops: Any, args: argparse.Namespace) -> int:
    if not args.artifact.is_file():
        raise UsageError(f"{args.artifact} is not a file")
    t0 = time.monotonic()
    try:
        status = await upgrade(
            ops,
            args.artifact,
            guest_path=args.guest_path,
            ready_timeout=args.ready_timeout,
            within=max(args.timeout, args.ready_timeout) + 120,
        )
    except UpgradeFailed as exc:
        _print(exc.status)
        return ExitCode.RPC_ERROR
    _print(status)
    print(f"upgraded {status.from_version} -> {status.to_version} in {time.monotonic() - t0:.2f}s")
    return ExitCode.OK
