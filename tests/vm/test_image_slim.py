"""The slimmed initrd (pykata.builder.slim) still holds everything the agent can reach.

No boot here: the initrd is unpacked and its own programs run chrooted in it (with a private
/proc where one is needed). The VM tests then exercise the same image booted.
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from pykata.builder.build import Result

# Every module the agent may import, through the agent's own loaders for the lazy ones.
IMPORT_EVERYTHING = textwrap.dedent(
    """
    import pkgutil, sys
    from pykata.agent import main
    main.serving_module()
    import pykata.agent, pykata.ttrpc, pykata.protocols
    names = []
    for package in (pykata.agent, pykata.ttrpc, pykata.protocols):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not info.name.endswith(".__main__"):  # that one runs the agent
                __import__(info.name)
                names.append(info.name)
    from pykata.agent.network.netlink import load_pyroute2
    load_pyroute2().AsyncIPRoute
    from pykata.agent.metrics import collector
    collector.Metrics
    import pyudev
    pyudev.Context
    from google.protobuf.internal import api_implementation
    print(len(names), api_implementation.Type())
    """
)


@pytest.fixture(scope="module")
def tree(guest_artifacts: Result, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("initrd")
    with guest_artifacts.artifact.open("rb") as image:
        unpacked = subprocess.run(["zstd", "-dc"], stdin=image, capture_output=True, check=True)
    subprocess.run(
        ["cpio", "-id", "--quiet"], input=unpacked.stdout, cwd=root, check=True,
        capture_output=True,
    )  # fmt: skip
    return root


def in_tree(root: Path, *argv: str) -> str:
    # A pid namespace of its own with a fresh /proc (crun re-executes itself through it),
    # whose processes die with unshare when a timeout kills it.
    return subprocess.run(
        ["unshare", "--mount", "--pid", "--fork", "--kill-child", f"--mount-proc={root}/proc",
         "chroot", str(root), *argv],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip


@pytest.mark.vm
def test_the_agent_imports_all_it_may_need(tree: Path) -> None:
    count, backend = in_tree(tree, "/usr/bin/python3", "-I", "-c", IMPORT_EVERYTHING).split()
    assert int(count) > 50
    assert backend == "upb"


@pytest.mark.vm
def test_the_programs_the_agent_runs_work(tree: Path) -> None:
    assert in_tree(tree, "/usr/bin/crun", "--version").startswith("crun version")
    assert "nf_tables" in in_tree(tree, "/usr/sbin/iptables-save", "--version")
    assert "nf_tables" in in_tree(tree, "/usr/sbin/ip6tables-restore", "--version")
    # ctypes.util.find_library (pyudev's way to libudev) asks ldconfig's cache.
    assert "libudev.so.1" in in_tree(tree, "/usr/sbin/ldconfig", "-p")
    # The debug console's shell and tools.
    assert (
        in_tree(tree, "/bin/sh", "-c", "echo $((6 * 7)); ls /usr/bin | grep -c crun") == "42\n1\n"
    )


@pytest.mark.vm
def test_what_the_agent_never_uses_is_gone(tree: Path) -> None:
    gone = [
        "usr/bin/dpkg", "usr/bin/bash", "usr/bin/perl", "usr/bin/kmod", "usr/bin/tar",
        "usr/lib/x86_64-linux-gnu/libcrypto.so.3", "usr/lib/python3.13/tkinter",
        "usr/lib/python3.13/pydoc.py", "usr/lib/python3/dist-packages/pyroute2/ndb",
        "usr/lib/pykata-build",
    ]  # fmt: skip
    assert [path for path in gone if (tree / path).exists()] == []
    # Standard-library modules are sourceless; the agent keeps its sources for tracebacks.
    assert (tree / "usr/lib/python3.13/json/__init__.pyc").exists()
    assert not (tree / "usr/lib/python3.13/json/__init__.py").exists()
    assert (tree / "usr/lib/python3/dist-packages/pykata/agent/main.py").exists()
