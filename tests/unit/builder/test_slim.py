"""The initrd slimmer's parts that need no image: ELF reading, the kept set, pruning."""

from __future__ import annotations

import py_compile
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pykata.builder import slim


def readelf_needed(path: Path) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True).stdout
    return [line.split("[", 1)[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]


@pytest.mark.parametrize("binary", [sys.executable, "/bin/ls", "/usr/bin/env"])
def test_elf_needed_agrees_with_readelf(binary: str) -> None:
    if shutil.which("readelf") is None:
        pytest.fail("readelf is missing: `just setup` installs binutils")
    path = Path(binary).resolve()
    assert slim.elf_needed(path) == readelf_needed(path)
    assert "libc.so.6" in slim.elf_needed(path)


def test_elf_needed_of_a_script_is_empty(tmp_path: Path) -> None:
    script = tmp_path / "s"
    script.write_text("#!/bin/sh\n")
    assert slim.elf_needed(script) == []
    assert not slim.is_elf(script)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A merged-usr tree: /lib -> usr/lib, a versioned library behind two links."""
    root = tmp_path / "root"
    lib = root / "usr/lib/x86_64-linux-gnu"
    lib.mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    (lib / "libfoo.so.1.2.3").write_bytes(b"lib")
    (lib / "libfoo.so.1").symlink_to("libfoo.so.1.2.3")
    (lib / "libunused.so.1").write_bytes(b"x" * 100)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/prog").write_bytes(b"prog")
    (root / "usr/bin/alias").symlink_to("/usr/bin/prog")
    (root / "usr/bin/other").write_bytes(b"o" * 10)
    (root / "usr/lib/modules/6.1").mkdir(parents=True)
    (root / "usr/lib/modules/6.1/modules.dep").write_text("")
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    return root


def test_keep_follows_links_through_linked_folders(tree: Path) -> None:
    keep = slim.Keep(tree)
    assert keep.add(Path("lib/x86_64-linux-gnu/libfoo.so.1")) == Path(
        "usr/lib/x86_64-linux-gnu/libfoo.so.1.2.3"
    )
    assert keep.paths == {
        Path("usr/lib/x86_64-linux-gnu/libfoo.so.1"),
        Path("usr/lib/x86_64-linux-gnu/libfoo.so.1.2.3"),
    }
    assert keep.add(Path("usr/bin/alias")) == Path("usr/bin/prog")
    assert keep.add(Path("usr/bin/missing")) is None


def test_prune_deletes_only_what_is_not_kept_below_the_pruned_folders(tree: Path) -> None:
    keep = slim.Keep(tree)
    keep.add(Path("usr/bin/alias"))
    keep.add(Path("usr/lib/x86_64-linux-gnu/libfoo.so.1"))
    freed = slim.prune(keep)
    assert freed == 110
    assert sorted(p.name for p in (tree / "usr/bin").iterdir()) == ["alias", "prog"]
    assert not (tree / "usr/lib/x86_64-linux-gnu/libunused.so.1").exists()
    assert (tree / "usr/lib/modules/6.1/modules.dep").exists()  # never pruned
    assert (tree / "etc/passwd").exists()


def test_prune_removes_folders_it_emptied(tree: Path) -> None:
    (tree / "usr/lib/python3.13/email").mkdir(parents=True)
    (tree / "usr/lib/python3.13/email/__init__.py").write_text("")
    slim.prune(slim.Keep(tree))
    assert not (tree / "usr/lib/python3.13").exists()
    assert (tree / "usr/lib/modules/6.1").is_dir()


def test_drop_sources_leaves_sourceless_pyc_except_below_the_kept_package(
    tmp_path: Path,
) -> None:
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    stdlib = tmp_path / "usr/lib" / version
    ours = tmp_path / "usr/lib/python3/dist-packages/pykata/agent"
    for folder in (stdlib, ours):
        folder.mkdir(parents=True)
        (folder / "mod.py").write_text("VALUE = 42\n")
        py_compile.compile(str(folder / "mod.py"), doraise=True)
    freed = slim.drop_sources(tmp_path, Path("usr/lib/python3/dist-packages/pykata"))
    assert freed == len("VALUE = 42\n")
    assert sorted(p.name for p in stdlib.iterdir()) == ["mod.pyc"]
    assert (ours / "mod.py").exists() and (ours / "__pycache__").is_dir()
    # The interpreter loads the sourceless file.
    out = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            f"import sys; sys.path.insert(0, {str(stdlib)!r}); "
            "import mod; print(mod.VALUE, mod.__file__)",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["42", str(stdlib / "mod.pyc")]
