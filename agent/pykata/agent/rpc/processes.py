"""AgentService RPCs about processes inside containers: exec, signals, wait and stdio."""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING

from google.protobuf import empty_pb2

from pykata.agent.container.spec import process_defaults
from pykata.agent.errors import FailedPrecondition, InvalidArgument, Unavailable
from pykata.agent.process.process import Process
from pykata.agent.process.stdio import set_window_size
from pykata.agent.rpc.convert import oci
from pykata.agent.validation import validate_exec_id
from pykata.protocols import agent_pb2

if TYPE_CHECKING:
    from pykata.agent.container.container import Container
    from pykata.agent.process.stdio import OutputStream
    from pykata.agent.sandbox import Sandbox

log = logging.getLogger("kata-agent.processes")

# Bounds a single ReadStdout/ReadStderr answer (the host asks for 32 KiB at a time).
MAX_READ = 4 << 20


def signal_handled(pid: int, sig: int) -> bool:
    """Whether the process catches ``sig`` (SigCgt in /proc/<pid>/status)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
    except FileNotFoundError:  # already gone
        pass
    return False


class ProcessHandlers:
    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    def _find(self, cid: str, exec_id: str) -> tuple[Container, Process]:
        container = self._sandbox.get_container(cid)
        return container, container.find_process(exec_id)

    async def ExecProcess(self, request: agent_pb2.ExecProcessRequest) -> empty_pb2.Empty:
        exec_id = validate_exec_id(request.exec_id)
        container = self._sandbox.get_container(request.container_id)
        if not request.HasField("process") or not request.process.Args:
            raise InvalidArgument("ExecProcess needs a process with args")
        process = oci.to_dict(request.process)
        process_defaults(process)
        await container.exec(exec_id, process)
        log.info("process started", extra={"container": container.id, "exec_id": exec_id})
        return empty_pb2.Empty()

    async def SignalProcess(self, request: agent_pb2.SignalProcessRequest) -> empty_pb2.Empty:
        sig = request.signal
        if not 0 < sig < signal.NSIG:
            raise InvalidArgument(f"invalid signal {sig}")
        container = self._sandbox.get_container(request.container_id)
        # Kata's encoding of "all processes": no exec id and SIGKILL.
        if not request.exec_id and sig == signal.SIGKILL:
            await container.signal_all(sig)
            return empty_pb2.Empty()
        process = container.find_process(request.exec_id)
        # An init without a SIGTERM handler would ignore it (pid 1 of its namespace): Kata
        # turns that into SIGKILL.
        if process.init and sig == signal.SIGTERM and not signal_handled(process.pid, sig):
            sig = signal.SIGKILL
        process.signal(sig)
        return empty_pb2.Empty()

    async def WaitProcess(
        self, request: agent_pb2.WaitProcessRequest
    ) -> agent_pb2.WaitProcessResponse:
        container, process = self._find(request.container_id, request.exec_id)
        status = await process.wait()
        # Every waiter gets the status; the first one back forgets the process.
        await container.forget(process)
        return agent_pb2.WaitProcessResponse(status=status)

    async def ReadStdout(
        self, request: agent_pb2.ReadStreamRequest
    ) -> agent_pb2.ReadStreamResponse:
        container = self._sandbox.get_container(request.container_id)
        process = container.find_output(request.exec_id)
        if process.stdout is None:
            raise FailedPrecondition("the process has no stdout")
        return await _read(container, process, process.stdout, request.len)

    async def ReadStderr(
        self, request: agent_pb2.ReadStreamRequest
    ) -> agent_pb2.ReadStreamResponse:
        container = self._sandbox.get_container(request.container_id)
        process = container.find_output(request.exec_id)
        if process.stderr is None:
            # A terminal merges stderr into stdout: there is nothing to read here.
            return agent_pb2.ReadStreamResponse()
        return await _read(container, process, process.stderr, request.len)

    async def WriteStdin(
        self, request: agent_pb2.WriteStreamRequest
    ) -> agent_pb2.WriteStreamResponse:
        _, process = self._find(request.container_id, request.exec_id)
        if process.stdin is None:
            raise FailedPrecondition("the process has no stdin")
        if not request.data:
            await process.stdin.close()
            return agent_pb2.WriteStreamResponse(len=0)
        try:
            written = await process.stdin.write(request.data)
        except BrokenPipeError as exc:
            raise FailedPrecondition(f"stdin of {process.exec_id} is closed") from exc
        return agent_pb2.WriteStreamResponse(len=written)

    async def CloseStdin(self, request: agent_pb2.CloseStdinRequest) -> empty_pb2.Empty:
        _, process = self._find(request.container_id, request.exec_id)
        if process.stdin is not None:
            await process.stdin.close()
        return empty_pb2.Empty()

    async def TtyWinResize(self, request: agent_pb2.TtyWinResizeRequest) -> empty_pb2.Empty:
        _, process = self._find(request.container_id, request.exec_id)
        if process.tty_master is None:
            raise Unavailable("no tty")
        if process.exited:
            raise FailedPrecondition("the process has exited")
        set_window_size(process.tty_master, request.row, request.column)
        return empty_pb2.Empty()


async def _read(
    container: Container, process: Process, stream: OutputStream, requested: int
) -> agent_pb2.ReadStreamResponse:
    data = await stream.read(_size(requested))
    if not data:
        await _release_if_drained(container, process)
    return agent_pb2.ReadStreamResponse(data=data)


async def _release_if_drained(container: Container, process: Process) -> None:
    """Once a waited-for process has delivered EOF on every stream, nothing needs it."""
    if container.draining.get(process.exec_id) is process and process.output_drained:
        await container.release_output(process)


def _size(requested: int) -> int:
    if requested <= 0:
        raise InvalidArgument("read length must be positive")
    return min(requested, MAX_READ)
