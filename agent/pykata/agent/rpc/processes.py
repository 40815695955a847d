"""AgentService RPCs about processes inside containers: exec, signals, wait and stdio."""

from __future__ import annotations

from google.protobuf import empty_pb2

from pykata.agent.errors import InvalidArgument
from pykata.agent.process.process import Process
from pykata.agent.rpc.convert import oci
from pykata.agent.rpc.convert.requests import refuse_unhonoured, string_user
from pykata.agent.sandbox import Sandbox
from pykata.agent.validation import validate_exec_id, validate_signal
from pykata.protocols import agent_pb2
from pykata.ttrpc.framing import max_field_content
from pykata.ttrpc.server import MAX_RESPONSE_MESSAGE

# The most output one ReadStreamResponse{data} can carry and still fit in a ttRPC response
# (4 MiB less 10 bytes of envelope). A read asks for no more: bytes taken out of a process's
# buffer for an answer the server then refused as too large would be lost.
MAX_READ_DATA = max_field_content(MAX_RESPONSE_MESSAGE)


class ProcessHandlers:
    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    def _process(self, cid: str, exec_id: str) -> Process:
        return self._sandbox.get_container(cid).find_process(exec_id)

    async def ExecProcess(self, request: agent_pb2.ExecProcessRequest) -> empty_pb2.Empty:
        exec_id = validate_exec_id(request.exec_id)
        refuse_unhonoured(request)
        container = self._sandbox.get_container(request.container_id)
        if not request.HasField("process") or not request.process.Args:
            raise InvalidArgument("ExecProcess needs a process with args")
        await container.exec(
            exec_id, oci.to_dict(request.process), string_user(request.string_user)
        )
        return empty_pb2.Empty()

    async def SignalProcess(self, request: agent_pb2.SignalProcessRequest) -> empty_pb2.Empty:
        sig = validate_signal(request.signal)
        container = self._sandbox.get_container(request.container_id)
        await container.signal_process(request.exec_id, sig)
        return empty_pb2.Empty()

    async def WaitProcess(
        self, request: agent_pb2.WaitProcessRequest
    ) -> agent_pb2.WaitProcessResponse:
        container = self._sandbox.get_container(request.container_id)
        return agent_pb2.WaitProcessResponse(status=await container.wait_process(request.exec_id))

    async def ReadStdout(
        self, request: agent_pb2.ReadStreamRequest
    ) -> agent_pb2.ReadStreamResponse:
        container = self._sandbox.get_container(request.container_id)
        data = await container.read_stdout(request.exec_id, min(request.len, MAX_READ_DATA))
        return agent_pb2.ReadStreamResponse(data=data)

    async def ReadStderr(
        self, request: agent_pb2.ReadStreamRequest
    ) -> agent_pb2.ReadStreamResponse:
        container = self._sandbox.get_container(request.container_id)
        data = await container.read_stderr(request.exec_id, min(request.len, MAX_READ_DATA))
        return agent_pb2.ReadStreamResponse(data=data)

    async def WriteStdin(
        self, request: agent_pb2.WriteStreamRequest
    ) -> agent_pb2.WriteStreamResponse:
        process = self._process(request.container_id, request.exec_id)
        return agent_pb2.WriteStreamResponse(len=await process.write_stdin(request.data))

    async def CloseStdin(self, request: agent_pb2.CloseStdinRequest) -> empty_pb2.Empty:
        await self._process(request.container_id, request.exec_id).close_stdin()
        return empty_pb2.Empty()

    async def TtyWinResize(self, request: agent_pb2.TtyWinResizeRequest) -> empty_pb2.Empty:
        self._process(request.container_id, request.exec_id).resize_tty(request.row, request.column)
        return empty_pb2.Empty()
