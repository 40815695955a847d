"""Compile protocols/*.proto into agent/pykata/protocols (``just proto``).

grpcio-tools and mypy-protobuf are needed here only; the generated modules need just the
``protobuf`` runtime. protoc emits top-level imports (``import oci_pb2``); we rewrite them as
package-relative imports so the modules live inside ``pykata.protocols``.

Usage: python protocols/generate.py [OUTPUT_DIR]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "agent" / "pykata" / "protocols"
_IMPORT = re.compile(r"^import (\w+_pb2)( as \w+)?$", re.MULTILINE)


def generate(out: Path) -> list[Path]:
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(p.name for p in HERE.glob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{HERE}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={Path(sys.executable).parent / 'protoc-gen-mypy'}",
        f"--python_out={out}",
        f"--mypy_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = []
    for proto in protos:
        for suffix in (".py", ".pyi"):
            path = out / (proto.removesuffix(".proto") + "_pb2" + suffix)
            text = _IMPORT.sub(lambda m: f"from . import {m[1]}{m[2] or ''}", path.read_text())
            path.write_text(text)
            written.append(path)
    return written


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT):
        print(path)
