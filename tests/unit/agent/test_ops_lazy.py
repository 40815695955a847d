"""With the ops channel off, nothing of it or of the upgrade is loaded: the agent's start-up
memory does not pay for them."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
from pykata.agent import main
main.serving_module()
from pykata.agent.rpc import wiring
print(json.dumps(sorted(sys.modules)))
"""


def test_serving_without_ops_loads_no_ops_or_upgrade_module() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], check=True, capture_output=True, text=True
    ).stdout
    modules = json.loads(out)
    assert "pykata.agent.daemon" in modules and "pykata.agent.rpc.wiring" in modules
    loaded = [
        m
        for m in modules
        if m.startswith(("pykata.agent.ops", "pykata.agent.upgrade", "pykata.agent.rpc.ops"))
        or m in ("pykata.protocols.ops_pb2", "zipfile")
    ]
    assert loaded == []
