"""Commands of the form `Method [json://{...} | file:///path.json]` and their request bodies.

A body is the protobuf JSON mapping of the method's request message (field names as in the
.proto or lowerCamelCase); no body means a default (empty) request.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import json_format
from google.protobuf.message import Message

from pykata.host.ctl.errors import UsageError
from pykata.host.ctl.methods import METHODS, Method

JSON_PREFIX = "json://"
FILE_PREFIX = "file://"


def parse_command(command: str) -> tuple[Method, Message]:
    name, _, body = command.strip().partition(" ")
    if not name:
        raise UsageError("empty command")
    method = METHODS.get(name)
    if method is None:
        raise UsageError(f"unknown method {name!r} (see `kata-agent-ctl list`)")
    return method, parse_body(method, body.strip())


def parse_body(method: Method, body: str) -> Message:
    request = method.request_type()
    if not body:
        return request
    try:
        json_format.Parse(read_body_text(body), request)
    except json_format.ParseError as exc:
        raise UsageError(f"bad JSON body for {method.name}: {exc}") from None
    return request


def read_body_text(body: str) -> str:
    if body.startswith(JSON_PREFIX):
        return body[len(JSON_PREFIX) :]
    if body.startswith(FILE_PREFIX):
        path = Path(body[len(FILE_PREFIX) :])
        try:
            return path.read_text()
        except OSError as exc:
            raise UsageError(f"cannot read body file {path}: {exc.strerror}") from None
    raise UsageError(f"a body must start with {JSON_PREFIX} or {FILE_PREFIX}: {body[:40]!r}")


def format_response(response: Message) -> str:
    return json_format.MessageToJson(
        response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
