"""Our compiled descriptors against the wire contracts in protocols/contract, both ways."""

from __future__ import annotations

import filecmp
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor, FileDescriptor

from pykata.protocols import (
    agent_pb2,
    csi_pb2,
    health_pb2,
    oci_pb2,
    rpc_status_pb2,
    ttrpc_pb2,
    types_pb2,
)

ROOT = Path(__file__).resolve().parents[3]
CONTRACTS = ROOT / "protocols" / "contract"
API_FILES: list[FileDescriptor] = [
    m.DESCRIPTOR for m in (agent_pb2, csi_pb2, health_pb2, oci_pb2, types_pb2)
]

_TYPE_NAMES = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_MESSAGE: "message",
    FieldDescriptor.TYPE_ENUM: "enum",
}


def _field(f: FieldDescriptor) -> dict[str, Any]:
    out: dict[str, Any] = {"name": f.name, "number": f.number, "type": _TYPE_NAMES[f.type]}
    if f.message_type is not None:
        out["type_name"] = f.message_type.full_name
    if f.enum_type is not None:
        out["type_name"] = f.enum_type.full_name
    if f.is_repeated:
        out["repeated"] = True
    if f.has_presence and f.containing_oneof is not None:
        if f.containing_oneof.name == "_" + f.name:
            out["optional"] = True  # proto3 `optional`: a synthetic one-field oneof
        else:
            out["oneof"] = f.containing_oneof.name
    return out


def _walk(desc: Descriptor, messages: dict[str, Any], enums: dict[str, Any]) -> None:
    entry: dict[str, Any] = {"fields": [_field(f) for f in desc.fields]}
    if desc.GetOptions().map_entry:
        entry["map_entry"] = True
    messages[desc.full_name] = entry
    for nested in desc.nested_types:
        _walk(nested, messages, enums)
    for enum in desc.enum_types:
        enums[enum.full_name] = _enum(enum)


def _enum(enum: EnumDescriptor) -> dict[str, int]:
    return {v.name: v.number for v in enum.values}


def _ours() -> dict[str, Any]:
    messages: dict[str, Any] = {}
    enums: dict[str, Any] = {}
    services: dict[str, Any] = {}
    files: dict[str, Any] = {}
    for fd in API_FILES:
        files[fd.name] = {"package": fd.package, "imports": [d.name for d in fd.dependencies]}
        for desc in fd.message_types_by_name.values():
            _walk(desc, messages, enums)
        for enum in fd.enum_types_by_name.values():
            enums[enum.full_name] = _enum(enum)
        for svc in fd.services_by_name.values():
            services[svc.full_name] = [
                {
                    "method": m.name,
                    "input": m.input_type.full_name,
                    "output": m.output_type.full_name,
                }
                for m in svc.methods
            ]
    return {"messages": messages, "enums": enums, "services": services, "files": files}


def _normalise(messages: dict[str, Any]) -> dict[str, Any]:
    """Fields keyed by number, so declaration order does not matter."""
    return {
        name: {**m, "fields": {f["number"]: f for f in m["fields"]}} for name, m in messages.items()
    }


@pytest.fixture(scope="module")
def contract() -> dict[str, Any]:
    path = CONTRACTS / "kata-agent-api.json"
    return json.loads(path.read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def ours() -> dict[str, Any]:
    return _ours()


def test_no_message_missing_or_extra(contract: dict[str, Any], ours: dict[str, Any]) -> None:
    assert sorted(set(contract["messages"]) - set(ours["messages"])) == []
    assert sorted(set(ours["messages"]) - set(contract["messages"])) == []


def test_every_field_matches(contract: dict[str, Any], ours: dict[str, Any]) -> None:
    theirs, mine = _normalise(contract["messages"]), _normalise(ours["messages"])
    diffs = [
        (name, theirs[name], mine.get(name)) for name in theirs if theirs[name] != mine.get(name)
    ]
    assert diffs == []


def test_enums_services_and_files_match(contract: dict[str, Any], ours: dict[str, Any]) -> None:
    assert ours["enums"] == contract["enums"]
    assert ours["services"] == contract["services"]
    assert ours["files"] == contract["files"]


def test_comparison_catches_a_renumbered_field(
    contract: dict[str, Any], ours: dict[str, Any]
) -> None:
    mutated = json.loads(json.dumps(ours["messages"]))
    mutated["grpc.CreateContainerRequest"]["fields"][0]["number"] += 100
    assert _normalise(mutated) != _normalise(contract["messages"])


def test_ttrpc_framing_messages_match_contract() -> None:
    path = CONTRACTS / "ttrpc-contract.json"
    expected = json.loads(path.read_text())["messages"]
    descs = {
        d.full_name: d
        for d in (
            ttrpc_pb2.Request.DESCRIPTOR,
            ttrpc_pb2.KeyValue.DESCRIPTOR,
            ttrpc_pb2.Response.DESCRIPTOR,
            rpc_status_pb2.Status.DESCRIPTOR,
        )
    }
    assert set(descs) == set(expected)
    for name, fields in expected.items():
        assert [_field(f) for f in descs[name].fields] == fields, name


def test_generated_modules_are_current(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "protocols"))
    try:
        import generate
    finally:
        sys.path.pop(0)
    generate.generate(tmp_path)
    committed = ROOT / "agent" / "pykata" / "protocols"
    names = sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".py", ".pyi"))
    _, mismatch, errors = filecmp.cmpfiles(tmp_path, committed, names, shallow=False)
    assert (mismatch, errors) == ([], []), "run `just proto` and commit the result"
