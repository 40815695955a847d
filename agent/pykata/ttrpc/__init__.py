"""An asyncio ttRPC (containerd's RPC over unix sockets and vsock) server and client."""

from pykata.ttrpc.client import Client
from pykata.ttrpc.errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    Code,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    TtrpcError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
)
from pykata.ttrpc.server import Server

__all__ = [
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "Client",
    "Code",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Server",
    "TtrpcError",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
]
