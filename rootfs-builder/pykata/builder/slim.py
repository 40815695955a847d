"""Slim the initrd to what the agent can reach, found from the tree itself.

Runs inside the image tree (mkosi's finalize step, chrooted, with the guest's own Python),
after every package is in. What stays:

- programs the agent runs (crun, iptables through xtables-nft-multi, /bin/sh for the
  debug console, ldconfig for ctypes' library lookup, busybox's applets for the console) and
  the Python interpreter;
- the shared libraries those and the kept Python extension modules need (DT_NEEDED, read
  from the ELF files), plus the ones loaded with dlopen (xtables extensions, libudev for
  pyudev, libgcc_s for thread cancellation);
- the Python modules the agent can import: a static import closure (modulefinder) of every
  pykata module, plus the modules imported by name at run time (ROOT_MODULES);
- everything outside the pruned folders (/etc, kernel modules, /usr/share).

The rest (dpkg, bash, coreutils, libcrypto, most of the standard library, pyroute2's NDB...)
is deleted. Usage: ``python3 -I slim.py [ROOT]`` (ROOT defaults to /).
"""

from __future__ import annotations

import importlib.util
import modulefinder
import os
import py_compile
import shutil
import struct
import subprocess
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path

# Folders whose files go unless something below keeps them.
PRUNED = ("usr/bin", "usr/sbin", "usr/libexec", "usr/lib")
# Never pruned below usr/lib: the kernel's modules, the os-release, module-load lists.
UNTOUCHED = ("usr/lib/modules", "usr/lib/os-release", "usr/lib/modules-load.d")
PROGRAMS = (
    "usr/bin/python3",
    "usr/bin/kata-agent",
    "usr/bin/crun",
    "usr/bin/dash",
    "usr/bin/busybox",
    "usr/sbin/xtables-nft-multi",
    "usr/sbin/ldconfig",
)
# Names that lead to kept programs (symlinks are kept when their target is).
PROGRAM_LINKS = ("usr/bin/sh", "usr/sbin/iptables*", "usr/sbin/ip6tables*")
LIBRARY_DIRS = ("usr/lib/x86_64-linux-gnu", "usr/lib64", "usr/lib")
# Loaded with dlopen, so no DT_NEEDED names them.
DLOPENED = (
    # The program interpreter (PT_INTERP), which programs name outside DT_NEEDED.
    "usr/lib64/ld-linux-x86-64.so.2",
    "usr/lib/x86_64-linux-gnu/xtables/*.so",
    "usr/lib/x86_64-linux-gnu/libudev.so.1",
    "usr/lib/x86_64-linux-gnu/libgcc_s.so.1",
)
# Imported by name at run time, which a static closure cannot see.
ROOT_MODULES = (
    # The interpreter's start: the codec registry, the file-system and stdio encodings.
    "encodings",
    "encodings.aliases",
    "encodings.utf_8",
    "encodings.utf_8_sig",
    "encodings.ascii",
    "encodings.latin_1",
    "encodings.unicode_escape",
    "encodings.raw_unicode_escape",
    "encodings.idna",
    # The C code of time.strptime and datetime.strptime imports it.
    "_strptime",
    # network/netlink.py imports it with importlib, without pyroute2's package __init__.
    "pyroute2.iproute.linux",
)
# Packages the agent loads without running their __init__ (network/netlink.py for pyroute2,
# whose __init__ brings NDB; metrics/collector.py defers prometheus_client's, which brings
# its HTTP exposition): registered, not scanned. Namespace packages (pykata, google) are
# registered the same way when met, as modulefinder cannot open them.
UNSCANNED_PACKAGES = ("pyroute2", "prometheus_client")
AGENT_PACKAGES = ("pykata/agent", "pykata/ttrpc", "pykata/protocols")
# Blocked by the agent at start (main.py): never loaded. ssl itself stays, as pyroute2
# imports it (deferred) without using it. The debugging tools are imported only by other
# modules' self-tests (difflib, heapq, pickle: `_test()`), never by the agent.
EXCLUDED_MODULES = ("_ssl", "_hashlib", "bz2", "_bz2", "lzma", "_lzma", "doctest", "pdb", "pydoc")

# -OO for the agent's Python: modules compiled at this level, /init runs with these flags
# (-I: no environment or user site; -S: no site module).
OPTIMIZE = 2
INIT_SCRIPT = """#!/usr/bin/python3 -ISOO
import sys
sys.path.append("/usr/lib/python3/dist-packages")
from pykata.agent.main import main
raise SystemExit(main())
"""

# Links followed from a name to its file at most (as the kernel's ELOOP limit).
MAX_LINKS = 40
ELF_MAGIC = b"\x7fELF"
SHT_DYNAMIC = 6
DT_NEEDED = 1


def elf_needed(path: Path) -> list[str]:
    """DT_NEEDED entries of a 64-bit little-endian ELF file; [] for anything else."""
    with path.open("rb") as f:
        data = f.read()
    if data[:4] != ELF_MAGIC or data[4] != 2 or data[5] != 1:
        return []
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
    ]
    needed: list[str] = []
    for _name, kind, _flags, _addr, offset, size, link, _info, _align, entsize in sections:
        if kind != SHT_DYNAMIC:
            continue
        strtab = sections[link][4]
        for pos in range(offset, offset + size, entsize or 16):
            tag, value = struct.unpack_from("<qQ", data, pos)
            if tag == DT_NEEDED:
                end = data.index(b"\0", strtab + value)
                needed.append(data[strtab + value : end].decode())
    return needed


def is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


class Keep:
    """The set of paths (relative to the root) that stay, symlinks and their targets alike."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths: set[Path] = set()

    def add(self, relative: Path) -> Path | None:
        """Keep ``relative`` and every link on the way to its file; the file, or None."""
        for _ in range(MAX_LINKS):
            if not (self.root / relative).is_symlink() and not (self.root / relative).exists():
                return None
            # A parent folder may be a link too (/lib -> usr/lib): keep the real route.
            relative = self._real_dir(relative.parent) / relative.name
            self.paths.add(relative)
            if not (self.root / relative).is_symlink():
                return relative
            relative = self._target(relative)
        return None

    def _target(self, relative: Path) -> Path:
        """Where the link at ``relative`` points, relative to the root."""
        target = Path(os.readlink(self.root / relative))
        base = Path("/") if target.is_absolute() else Path("/") / relative.parent
        return Path(os.path.normpath(base / target)).relative_to("/")

    def _real_dir(self, relative: Path) -> Path:
        real = Path()
        for part in relative.parts:
            real /= part
            while (self.root / real).is_symlink():
                real = self._target(real)
        return real

    def glob(self, pattern: str) -> list[Path]:
        return [p.relative_to(self.root) for p in sorted(self.root.glob(pattern))]


def find_library(keep: Keep, name: str) -> Path | None:
    for directory in LIBRARY_DIRS:
        found = keep.add(Path(directory) / name)
        if found is not None:
            return found
    return None


def keep_libraries(keep: Keep, binaries: Iterable[Path]) -> list[str]:
    """Keep the DT_NEEDED closure of ``binaries``; the names no folder holds."""
    missing: list[str] = []
    todo = list(binaries)
    done: set[Path] = set()
    while todo:
        binary = todo.pop()
        if binary in done:
            continue
        done.add(binary)
        for name in elf_needed(keep.root / binary):
            found = find_library(keep, name)
            if found is None:
                missing.append(f"{binary}: {name}")
            else:
                todo.append(found)
    return missing


class _Finder(modulefinder.ModuleFinder):
    def register_unscanned(self, name: str, directory: Path) -> None:
        module = self.add_module(name)
        # (typeshed's Module does not declare these attributes)
        vars(module).update(__path__=[str(directory)], __file__=str(directory / "__init__.py"))

    def import_module(
        self, partname: str, fqname: str, parent: modulefinder.Module | None
    ) -> modulefinder.Module | None:
        if fqname not in self.modules:
            search = vars(parent).get("__path__") if parent is not None else self.path
            for directory in search or []:
                candidate = Path(directory) / partname
                if candidate.is_dir() and not (candidate / "__init__.py").exists():
                    self.register_unscanned(fqname, candidate)
                    break
        return super().import_module(partname, fqname, parent)  # type: ignore[arg-type]


def python_modules(site: Path, stdlib: Path) -> tuple[list[Path], list[str]]:
    """Files (.py or extension) of every module the agent can import; modules not found."""
    finder = _Finder(
        path=[str(stdlib), str(stdlib / "lib-dynload"), str(site)], excludes=list(EXCLUDED_MODULES)
    )
    for name in UNSCANNED_PACKAGES:
        finder.register_unscanned(name, site / name)
    roots = list(ROOT_MODULES)
    for package in AGENT_PACKAGES:
        for source in sorted((site / package).rglob("*.py")):
            parts = source.relative_to(site).with_suffix("").parts
            roots.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    for name in roots:
        finder.import_hook(name)
    files = [Path(f) for m in finder.modules.values() if (f := vars(m).get("__file__"))]
    # "maybe" missing are names imported from a package that are not modules.
    missing, _maybe = finder.any_missing_maybe()
    missing = sorted(set(missing) - set(EXCLUDED_MODULES))
    return files, missing


def plan(root: Path) -> tuple[Keep, list[str]]:
    """What stays, and the problems found (a library or a module that is nowhere)."""
    keep = Keep(root)
    problems: list[str] = []
    binaries: list[Path] = []
    for program in PROGRAMS:
        found = keep.add(Path(program))
        if found is None:
            problems.append(f"program {program} is missing")
        else:
            binaries.append(found)
    for pattern in DLOPENED:
        for path in keep.glob(pattern):
            found = keep.add(path)
            if found is not None:
                binaries.append(found)
    for pattern in PROGRAM_LINKS:
        for path in keep.glob(pattern):
            target = (root / path).resolve()
            if target.is_relative_to(root) and target.relative_to(root) in keep.paths:
                keep.add(path)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    site = Path("/usr/lib/python3/dist-packages")
    files, missing = python_modules(root / site.relative_to("/"), root / stdlib.relative_to("/"))
    problems.extend(f"python module {name} not found" for name in missing if _expected(name))
    # Sources only: compile_modules() compiles what stays, for the way /init runs Python.
    for source in files:
        relative = source.relative_to(root)
        keep.add(relative)
        if source.suffix == ".so":
            binaries.append(relative)
    for dist_info in (root / site.relative_to("/")).glob("*.dist-info"):
        for path in dist_info.rglob("*"):
            keep.add(path.relative_to(root))
    problems.extend(f"library {item} not found" for item in keep_libraries(keep, binaries))
    return keep, problems


def _expected(name: str) -> bool:
    """Modules imported only on other platforms or inside a failed-import fallback are
    reported by modulefinder too; only a pykata module that is missing is a build error."""
    return name.startswith("pykata.")


def prune(keep: Keep) -> int:
    """Delete what is not kept below PRUNED; the bytes freed."""
    root = keep.root
    freed = 0
    for top in PRUNED:
        base = root / top
        if base.is_symlink() or not base.is_dir():
            continue
        for directory, dirnames, filenames in os.walk(base, topdown=True):
            here = Path(directory).relative_to(root)
            dirnames[:] = [d for d in dirnames if not _untouched(here / d)]
            for name in [*filenames, *[d for d in dirnames if (Path(directory) / d).is_symlink()]]:
                relative = here / name
                if relative in keep.paths or _untouched(relative):
                    continue
                path = root / relative
                if not path.is_symlink():
                    freed += path.stat().st_size
                path.unlink()
        for directory, _dirs, _files in os.walk(base, topdown=False):
            path = Path(directory)
            if path != base and not any(path.iterdir()) and not _untouched(path.relative_to(root)):
                path.rmdir()
    return freed


def compile_modules(root: Path, keep_sources: Path) -> int:
    """Compile every kept module for the way /init runs Python (OPTIMIZE: no docstrings, no
    asserts; 2 MiB less heap for the agent), unchecked, so nothing is stat'ed at import.

    Outside ``keep_sources`` only the compiled form stays, where the .py was (Python loads
    such a sourceless .pyc; one in __pycache__ it ignores without the source): tracebacks
    through those modules show no source lines; our own code keeps its sources. The bytes
    freed."""
    freed = 0
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    for top in ("usr/lib/python3", f"usr/lib/{version}"):
        for source in sorted((root / top).rglob("*.py")):
            cache = source.parent / "__pycache__"
            for stale in cache.glob(f"{source.stem}.*.pyc"):
                freed += stale.stat().st_size
                stale.unlink()
            if source.is_relative_to(root / keep_sources):
                target = importlib.util.cache_from_source(str(source), optimization=OPTIMIZE)
            else:
                target = str(source.with_suffix(".pyc"))
            py_compile.compile(
                str(source), cfile=target, dfile="/" + str(source.relative_to(root)),
                doraise=True, optimize=OPTIMIZE,
                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
            )  # fmt: skip
            if not source.is_relative_to(root / keep_sources):
                freed += source.stat().st_size
                source.unlink()
            freed -= Path(target).stat().st_size
        for cache in sorted((root / top).rglob("__pycache__"), reverse=True):
            if not any(cache.iterdir()):
                cache.rmdir()
    return freed


def write_init(root: Path) -> None:
    """/init: the agent under the interpreter flags the modules were compiled for; no site
    (its only use here is adding dist-packages, which /init does itself)."""
    init = root / "init"
    init.unlink(missing_ok=True)
    init.write_text(INIT_SCRIPT)
    init.chmod(0o755)


def _untouched(relative: Path) -> bool:
    return any(relative == Path(u) or relative.is_relative_to(u) for u in UNTOUCHED)


def install_applets(root: Path, directory: str = "usr/local/bin") -> int:
    """busybox's applets as links, for the debug console, where no kept program has the name."""
    busybox = root / "usr/bin/busybox"
    if not busybox.exists():
        return 0
    names = subprocess.run(
        [str(busybox), "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    target = root / directory
    target.mkdir(parents=True, exist_ok=True)
    made = 0
    for name in names:
        if any((root / d / name).exists() for d in ("usr/bin", "usr/sbin", directory)):
            continue
        (target / name).symlink_to("/usr/bin/busybox")
        made += 1
    return made


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else "/").resolve()
    keep, problems = plan(root)
    if problems:
        print("slim: refusing to prune:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    freed = prune(keep)
    freed += compile_modules(root, Path("usr/lib/python3/dist-packages/pykata"))
    write_init(root)
    applets = install_applets(root)
    if root == Path("/") and shutil.which("ldconfig"):
        subprocess.run(["ldconfig"], check=True)
    print(
        f"slim: kept {len(keep.paths)} paths, freed {freed / 1e6:.1f} MB, "
        f"{applets} busybox applets linked"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
