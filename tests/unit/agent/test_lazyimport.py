"""Deferred modules: imported for free, loaded by the first use of one of their names.

Each case runs in a fresh interpreter: the modules involved must not be imported already.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from pykata.agent.lazyimport import defer


def run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_code_runs_at_first_use_of_a_name() -> None:
    out = run(
        "from pykata.agent.lazyimport import defer\n"
        "defer('colorsys')\n"
        "import colorsys\n"
        "print('rgb_to_hsv' in vars(colorsys), colorsys.__spec__.name)\n"
        "print(colorsys.rgb_to_hsv(1.0, 0.0, 0.0), 'rgb_to_hsv' in vars(colorsys))\n"
        "from colorsys import hls_to_rgb\n"
        "print(hls_to_rgb(0.0, 0.5, 1.0))\n"
    )
    assert out.splitlines() == [
        "False colorsys",
        "(0.0, 1.0, 1.0) True",
        "(1.0, 0.0, 0.0)",
    ]


def test_serving_agent_defers_protobufs_python_messages() -> None:
    out = run(
        "import sys\n"
        "from pykata.agent.main import serving_module\n"
        "serving_module()\n"
        "from pykata.protocols import agent_pb2\n"
        "request = agent_pb2.CreateSandboxRequest(hostname='pod', dns=['nameserver 10.0.0.1'])\n"
        "again = agent_pb2.CreateSandboxRequest.FromString(request.SerializeToString())\n"
        "print(again == request, 'google.protobuf.text_format' in sys.modules)\n"
        "from google.protobuf.internal import python_message\n"
        "print(callable(python_message._AttachFieldHelpers))\n"
    )
    assert out.splitlines() == ["True False", "True"]


def test_missing_module() -> None:
    with pytest.raises(ModuleNotFoundError):
        defer("pykata.agent.no_such_module")


def test_the_network_loads_pyroute2_without_ssl_or_sqlite3() -> None:
    """The serving agent blocks ssl, and the guest has no sqlite3 (pyroute2's NDB needs it);
    the rtnetlink client loads without either."""
    out = run(
        "import sys\n"
        "sys.modules['sqlite3'] = None\n"
        "from pykata.agent.main import serving_module\n"
        "serving_module()\n"
        "from pykata.agent.network.netlink import load_pyroute2\n"
        "print(callable(load_pyroute2().AsyncIPRoute))\n"
        "print(type(sys.modules['ssl']).__name__, '_ssl' in sys.modules)\n"
        "print('pyroute2.ndb.main' in sys.modules)\n"
    )
    assert out.splitlines() == ["True", "_Deferred False", "False"]
