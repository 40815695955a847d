"""A pod driven through the agent API (integration and VM tiers): the busybox rootfs shared
into a PID-1 agent's mount namespace, container specs, and for upgrades a counter container
whose numbered output must arrive whole."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

from pykata.agent.rpc.convert.oci import from_dict
from pykata.protocols import agent_pb2, oci_pb2

SHARED = "/run/kata-containers/shared/containers"
RPC_TIMEOUT = 60
# Prints 1, 2, 3, ... one line every 10 ms.
COUNTER = "i=0; while true; do i=$((i+1)); echo $i; usleep 10000; done"


def spec(cid: str, args: list[str], cgroup_parent: str, **resources: Any) -> oci_pb2.Spec:
    data = {
        "ociVersion": "1.0.2",
        "process": {"args": args, "env": ["PATH=/bin"], "cwd": "/"},
        "root": {"path": f"{SHARED}/{cid}/rootfs"},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
            "cgroupsPath": f"/{cgroup_parent}/{cid}",
            "resources": resources,
        },
    }
    return from_dict(data, oci_pb2.Spec())


def share_in(init_pid: int, rootfs: Path, cid: str) -> None:
    """Bind the rootfs where virtio-fs would show it, in the agent's mount namespace."""
    target = f"{SHARED}/{cid}/rootfs"
    script = f"mkdir -p {target} && mount --bind {rootfs} {target}"
    subprocess.run(["nsenter", "-t", str(init_pid), "-m", "sh", "-c", script], check=True)


class Pod:
    """Containers seen through one agent API connection (``agent``: its AgentService stub);
    ``share(cid)`` makes the rootfs of container ``cid`` appear where the agent expects it."""

    def __init__(self, agent: Any, share: Any, cgroup_parent: str) -> None:
        self.agent = agent
        self.share = share
        self.cgroup_parent = cgroup_parent

    async def start(self, cid: str, args: list[str], **resources: Any) -> None:
        self.share(cid)
        await self.agent.CreateContainer(
            agent_pb2.CreateContainerRequest(
                container_id=cid,
                exec_id=cid,
                OCI=spec(cid, args, self.cgroup_parent, **resources),
            ),
            timeout=RPC_TIMEOUT,
        )
        await self.agent.StartContainer(
            agent_pb2.StartContainerRequest(container_id=cid), timeout=RPC_TIMEOUT
        )

    async def read(self, cid: str, eid: str) -> bytes:
        out = b""
        while True:
            response = await self.agent.ReadStdout(
                agent_pb2.ReadStreamRequest(container_id=cid, exec_id=eid, len=64 << 10)
            )
            if not response.data:
                return out
            out += response.data

    async def wait(self, cid: str, eid: str) -> int:
        response = await self.agent.WaitProcess(
            agent_pb2.WaitProcessRequest(container_id=cid, exec_id=eid)
        )
        return int(response.status)

    async def write(self, cid: str, data: bytes) -> None:
        await self.agent.WriteStdin(
            agent_pb2.WriteStreamRequest(container_id=cid, exec_id=cid, data=data),
            timeout=RPC_TIMEOUT,
        )

    async def exec(self, cid: str, eid: str, args: list[str]) -> tuple[int, bytes]:
        await self.agent.ExecProcess(
            agent_pb2.ExecProcessRequest(
                container_id=cid, exec_id=eid, process=oci_pb2.Process(Args=args, Cwd="/")
            ),
            timeout=RPC_TIMEOUT,
        )
        out, code = await asyncio.gather(self.read(cid, eid), self.wait(cid, eid))
        return code, out

    async def kill(self, cid: str) -> int:
        await self.agent.SignalProcess(
            agent_pb2.SignalProcessRequest(container_id=cid, exec_id=cid, signal=9),
            timeout=RPC_TIMEOUT,
        )
        return await self.wait(cid, cid)

    async def remove(self, cid: str) -> None:
        await self.agent.RemoveContainer(
            agent_pb2.RemoveContainerRequest(container_id=cid, timeout=30), timeout=RPC_TIMEOUT
        )


class Counter:
    """Reads a counter container's output as it comes (one ReadStdout at a time, so one is
    nearly always pending: across an upgrade it is answered by the new agent)."""

    def __init__(self, pod: Pod, cid: str) -> None:
        self.pod = pod
        self.cid = cid
        self.data = b""
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while True:
            response = await self.pod.agent.ReadStdout(
                agent_pb2.ReadStreamRequest(container_id=self.cid, exec_id=self.cid, len=4096)
            )
            if not response.data:
                return
            self.data += response.data

    async def lines_beyond(self, count: int) -> None:
        target = len(self.numbers()) + count
        while len(self.numbers()) < target:
            if self.task.done():
                self.task.result()
                raise AssertionError(f"output of {self.cid} ended at {self.numbers()[-1:]}")
            await asyncio.sleep(0.05)

    def numbers(self) -> list[int]:
        return [int(n) for n in self.data.split(b"\n")[:-1]]

    async def finish(self) -> list[int]:
        """Kill the counter and return everything it printed (checked: no line lost or
        repeated)."""
        assert await self.pod.kill(self.cid) == 137
        await asyncio.wait_for(self.task, RPC_TIMEOUT)
        numbers = self.numbers()
        assert numbers == list(range(1, len(numbers) + 1))
        return numbers
