"""Kernel command line options of the agent in a real guest: the log vport streams the JSON
log (from the announce on) to its vsock client, and the debug console vport gives a shell,
through which the PID 1 set-up (cgroup controllers, lo, /dev/ptmx) is checked."""

from __future__ import annotations

import asyncio
import json
import re
import socket

import pytest

from pykata.builder import build
from pykata.host.vm.runner import VM
from pykata.ttrpc.addresses import parse_address
from pykata.ttrpc.dialing import dial

pytestmark = [
    pytest.mark.vm,
]

LOG_PORT = 1025
CONSOLE_PORT = 1026
APPEND = (
    f"agent.log=debug agent.log_vport={LOG_PORT} "
    f"agent.debug_console agent.debug_console_vport={CONSOLE_PORT}"
)


async def read_until(sock: socket.socket, marker: bytes, within: float) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    async with asyncio.timeout(within):
        while marker not in data:
            chunk = await loop.sock_recv(sock, 65536)
            if not chunk:
                break
            data += chunk
    return data


async def test_log_and_debug_console_vports(
    guest_artifacts: build.Result, tmp_path_factory: pytest.TempPathFactory
) -> None:
    workdir = tmp_path_factory.mktemp("vm")
    async with VM(
        guest_artifacts.kernel, guest_artifacts.artifact, workdir=workdir, append=APPEND
    ) as vm:
        await vm.wait_port(1024, within=240)
        logs = await dial(parse_address(vm.vsock_address(LOG_PORT)), timeout=30)
        with logs:
            data = await read_until(logs, b'"msg": "agent ready"', within=60)
        records = [json.loads(line) for line in data.decode().splitlines() if line]
        assert records[0]["msg"] == "announce"
        assert records[0]["config"]["log_vport"] == LOG_PORT
        assert records[0]["config"]["log_level"] == "debug"
        assert all(r["name"] == "kata-agent" for r in records)
        assert '"msg": "announce"' not in vm.console_log.read_text()  # not on the console

        shell = await dial(parse_address(vm.vsock_address(CONSOLE_PORT)), timeout=30)
        with shell:
            loop = asyncio.get_running_loop()
            # What PID 1 set up, seen from inside the guest.
            await loop.sock_sendall(
                shell,
                b"echo ctl=$(cat /sys/fs/cgroup/cgroup.subtree_control);"
                b" echo lo=$(cat /sys/class/net/lo/flags); echo ptmx=$(readlink /dev/ptmx);"
                b" echo pykata-$((6*7))\n",
            )
            output = (await read_until(shell, b"pykata-42", within=60)).decode()
            await loop.sock_sendall(shell, b"exit\n")
        # A prompt may precede an answer on its line; the echoed command (values "$(...") never
        # matches.
        facts = dict(re.findall(r"\b(ctl|lo|ptmx)=([^\r\n$]*)\r?$", output, re.MULTILINE))
        assert {"memory", "pids", "cpu"} <= set(facts["ctl"].split()), output
        assert int(facts["lo"], 16) & 0x1  # IFF_UP
        assert facts["ptmx"] == "pts/ptmx"
