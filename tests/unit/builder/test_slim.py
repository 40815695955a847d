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


def test_compile_modules_leaves_sourceless_pyc_except_below_the_kept_package(
    tmp_path: Path,
) -> None:
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    stdlib = tmp_path / "usr/lib" / version
    ours = tmp_path / "usr/lib/python3/dist-packages/pykata/agent"
    source = '"""Docs."""\nVALUE = 42\nassert VALUE < 0\n'
    for folder in (stdlib, ours):
        folder.mkdir(parents=True)
        (folder / "mod.py").write_text(source)
        py_compile.compile(str(folder / "mod.py"), doraise=True)  # as the postinst does
    slim.compile_modules(tmp_path, Path("usr/lib/python3/dist-packages/pykata"))
    assert sorted(p.name for p in stdlib.iterdir()) == ["mod.pyc"]
    assert sorted(p.name for p in (ours / "__pycache__").iterdir()) == [
        f"mod.{sys.implementation.cache_tag}.opt-2.pyc"
    ]
    assert (ours / "mod.py").exists()
    for folder, flags in ((stdlib, "-I"), (ours, "-IOO")):
        # Loaded, without its docstring or its assert; named by its path in the guest.
        out = subprocess.run(
            [sys.executable, flags, "-c", f"import sys; sys.path.insert(0, {str(folder)!r}); "
             "import mod; print(mod.VALUE, mod.__doc__, mod.__spec__.cached or mod.__file__)"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        assert out[:2] == ["42", "None"]


def test_init_runs_the_agent_with_the_flags_it_was_compiled_for(tmp_path: Path) -> None:
    (tmp_path / "init").symlink_to("usr/bin/kata-agent")
    slim.write_init(tmp_path)
    init = tmp_path / "init"
    assert not init.is_symlink() and init.stat().st_mode & 0o111
    first = init.read_text().splitlines()[0]
    assert first == "#!/usr/bin/python3 -ISOO" and slim.OPTIMIZE == 2
