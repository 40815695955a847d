"""grpc.Spec (and its parts) <-> the OCI runtime-spec JSON dict.

Kata's protobuf mirrors the OCI spec with Go-style field names (Version, Process, UIDMappings);
the JSON names follow from them by a fixed rule, with a few historical exceptions.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

# Proto field name -> OCI JSON name where the camel-case rule does not give it.
EXCEPTIONS = {"Version": "ociVersion", "Pagesize": "pageSize", "errnoret": "errnoRet"}
# Parts of the spec the guest has no use for.
SKIPPED = {"Solaris", "Windows"}

M = TypeVar("M", bound=Message)

_LEADING_CAPS = re.compile(r"^([A-Z0-9]+)(?=[A-Z][a-z]|$)|^([A-Z])")


def json_name(field: str) -> str:
    if field in EXCEPTIONS:
        return EXCEPTIONS[field]
    return _LEADING_CAPS.sub(lambda m: m.group(0).lower(), field, count=1)


def to_dict(message: Message) -> dict[str, Any]:
    """The message as OCI JSON; unset messages, empty lists and proto3 defaults are left out."""
    result: dict[str, Any] = {}
    for field, value in message.ListFields():
        if field.name in SKIPPED:
            continue
        name = json_name(field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            result[name] = dict(value)
        elif field.is_repeated:
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                result[name] = [to_dict(v) for v in value]
            else:
                result[name] = list(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            result[name] = to_dict(value)
        else:
            result[name] = value
    return result


def from_dict(data: dict[str, Any], message: M) -> M:
    """Fill ``message`` from OCI JSON (unknown keys are ignored); returns it."""
    by_json = {json_name(f.name): f for f in message.DESCRIPTOR.fields}
    for key, value in data.items():
        field = by_json.get(key)
        if field is None or value is None:
            continue
        target = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            target.update(value)
        elif field.is_repeated:
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                for item in value:
                    from_dict(item, target.add())
            else:
                target.extend(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            target.SetInParent()
            from_dict(value, target)
        else:
            setattr(message, field.name, value)
    return message
