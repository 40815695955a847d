"""AgentService CopyFile: files from the host into the shared directory."""

from __future__ import annotations

from google.protobuf import empty_pb2

from pykata.agent import copyfile
from pykata.protocols import agent_pb2


class FileHandlers:
    async def CopyFile(self, req: agent_pb2.CopyFileRequest) -> empty_pb2.Empty:
        copyfile.copy_file(
            req.path,
            file_size=req.file_size,
            file_mode=req.file_mode,
            dir_mode=req.dir_mode,
            uid=req.uid,
            gid=req.gid,
            offset=req.offset,
            data=req.data,
        )
        return empty_pb2.Empty()
