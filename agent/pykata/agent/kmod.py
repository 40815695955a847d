"""Kernel modules loaded by the agent itself: modules.dep for the order, finit_module(2).

The guest needs no modprobe (kmod links libcrypto: 6.6 MB of the initrd for module
signatures the agent never prints) and no process started for it at boot.
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

from pykata.agent.libc import last_error, libc

SYS_FINIT_MODULE = 313  # x86-64
MODULE_INIT_COMPRESSED_FILE = 4
COMPRESSED_SUFFIXES = (".ko.xz", ".ko.zst", ".ko.gz")
MODULE_SUFFIXES = (".ko", *COMPRESSED_SUFFIXES)


class ModuleError(Exception):
    pass


def canonical(name: str) -> str:
    """The kernel treats - and _ alike in module names."""
    return name.replace("-", "_")


def _name_of(path: str) -> str:
    base = os.path.basename(path)
    for suffix in MODULE_SUFFIXES:
        if base.endswith(suffix):
            return canonical(base.removesuffix(suffix))
    return canonical(base)


def modules_dir() -> Path:
    return Path("/lib/modules") / os.uname().release


class ModuleIndex:
    """One kernel's modules.dep and modules.builtin: what a name needs, in load order."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._deps: dict[str, tuple[str, list[str]]] = {}
        self._builtin: set[str] = set()
        try:
            dep_text = (root / "modules.dep").read_text()
        except OSError as exc:
            raise ModuleError(f"no module index in {root}: {exc.strerror}") from exc
        for line in dep_text.splitlines():
            path, sep, deps = line.partition(":")
            if sep:
                self._deps[_name_of(path)] = (path, deps.split())
        try:
            builtin = (root / "modules.builtin").read_text().split()
        except OSError:
            builtin = []
        self._builtin = {_name_of(path) for path in builtin}

    def load_order(self, name: str) -> list[str]:
        """Module files to load for ``name``, dependencies first ([] when built in)."""
        key = canonical(name)
        if key in self._builtin:
            return []
        if key not in self._deps:
            raise ModuleError(f"module {name} not found in {self.root}")
        path, deps = self._deps[key]
        # modules.dep lists every dependency, the deepest last, as modprobe loads them.
        return [*reversed(deps), path]


def loaded(name: str, sys_module: Path = Path("/sys/module")) -> bool:
    # Present for loaded modules and for built-in ones with parameters; initstate only for
    # loaded ones, so a built-in module is "loaded" too, which is what callers want.
    return (sys_module / canonical(name)).exists()


def _finit(path: Path, params: str) -> None:
    flags = MODULE_INIT_COMPRESSED_FILE if path.name.endswith(COMPRESSED_SUFFIXES) else 0
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.syscall(SYS_FINIT_MODULE, fd, ctypes.c_char_p(params.encode()), flags) != 0:
            error = last_error("finit_module", str(path))
            if error.errno != errno.EEXIST:
                raise error
    finally:
        os.close(fd)


def load(index: ModuleIndex, name: str, parameters: list[str] | None = None) -> None:
    """Load ``name`` and what it depends on; parameters apply to ``name`` only."""
    order = index.load_order(name)
    for position, relative in enumerate(order):
        target = position == len(order) - 1
        if not target and loaded(_name_of(relative)):
            continue
        try:
            _finit(index.root / relative, " ".join(parameters or []) if target else "")
        except OSError as exc:
            raise ModuleError(f"cannot load {_name_of(relative)}: {exc.strerror}") from exc


def load_all(names: list[str], root: Path | None = None) -> list[str]:
    """Load every module of ``names`` (each tried even when another failed); the errors."""
    try:
        index = ModuleIndex(root or modules_dir())
    except ModuleError as exc:
        return [str(exc)]
    errors: list[str] = []
    for name in names:
        try:
            load(index, name)
        except ModuleError as exc:
            errors.append(str(exc))
    return errors
