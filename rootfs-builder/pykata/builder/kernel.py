"""Guest kernels: Debian's trixie cloud kernel plus the modules the agent needs, or a kernel
built from Debian's linux-source with the kernel-config/ fragments, everything built in.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import lzma
import os
import re
import shutil
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pykata.builder import kconfig
from pykata.builder.apt import PrivateApt
from pykata.builder.stages import BuildError, Stages

DEBIAN_META = "linux-image-cloud-amd64"
SOURCE_PACKAGE = "linux-source-6.12"
MODULES_LOAD = Path("etc/modules-load.d/kata.conf")
# Tools to configure (kconfig: a C compiler, flex, bison) and to build a kernel.
CONFIG_TOOLS = {"gcc": "gcc", "make": "make", "flex": "flex", "bison": "bison"}
BUILD_TOOLS = {
    **CONFIG_TOOLS,
    "bc": "bc",
    "lz4": "lz4",
    "perl": "perl",
    "ld": "binutils",
    "/usr/include/libelf.h": "libelf-dev",
    "/usr/include/openssl/ssl.h": "libssl-dev",
}


@dataclass(frozen=True)
class Kernel:
    """A guest kernel ready to boot: the image, its config and the matching modules tree."""

    source: str  # "debian" or "build"
    version: str  # uname -r
    package_version: str  # Debian version of the package it came from
    image: Path
    config: Path
    modules: Path | None  # /usr/lib/modules/<version> of the Debian package


def debian_kernel(apt: PrivateApt, cache: Path, stages: Stages) -> Kernel:
    """trixie's cloud kernel, unpacked once per package version under cache."""
    apt.update()
    depends = apt.show(DEBIAN_META)["Depends"]
    package = depends.split(",")[0].split()[0]
    fields = apt.show(package)
    root = cache / f"{package}_{fields['Version']}"
    if not (root / ".complete").exists():
        (deb,) = apt.download([package], cache / "debs")
        if root.exists():
            shutil.rmtree(root)
        stages.run(["dpkg-deb", "-x", deb, root])
        (root / ".complete").touch()
    (image,) = (root / "boot").glob("vmlinuz-*")
    version = image.name.removeprefix("vmlinuz-")
    return Kernel(
        source="debian",
        version=version,
        package_version=fields["Version"],
        image=image,
        config=root / "boot" / f"config-{version}",
        modules=root / "usr/lib/modules" / version,
    )


def module_name(path: str) -> str:
    """`kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko.xz` -> its module name."""
    return re.sub(r"\.ko(\.\w+)?$", "", Path(path).name).replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """modules.dep -> {module name: (path, [paths of its dependencies])}."""
    table = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        path, _, deps = line.partition(":")
        table[module_name(path)] = (path, deps.split())
    return table


def resolve_modules(
    wanted: Iterable[str], deps: dict[str, tuple[str, list[str]]], builtin: set[str]
) -> tuple[list[str], list[str]]:
    """Module files needed to load `wanted` (dependencies included) and the names to load.

    Built-in modules need nothing; a name that is neither built in nor a module is an error,
    since the agent would fail at boot without it.
    """
    files: list[str] = []
    load: list[str] = []
    unknown = []
    for name in wanted:
        key = name.replace("-", "_")
        if key in builtin:
            continue
        if key not in deps:
            unknown.append(name)
            continue
        load.append(key)
        path, requires = deps[key]
        for item in [*requires, path]:
            if item not in files:
                files.append(item)
    if unknown:
        raise BuildError(f"kernel has no module or built-in named: {', '.join(unknown)}")
    return files, load


def read_module_list(path: Path) -> list[str]:
    return [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()
            if line.split("#", 1)[0].strip()]  # fmt: skip


def install_modules(kernel: Kernel, wanted: list[str], tree: Path, stages: Stages) -> list[str]:
    """Copy the wanted modules and their dependencies (uncompressed, so any loader can use
    them) into tree, and list them for loading at boot. Returns the module names."""
    assert kernel.modules is not None
    dep_file = kernel.modules / "modules.dep"
    if not dep_file.exists():
        # The package ships no indexes: depmod writes them at install time. Older depmod
        # (bookworm's) looks under <base>/lib/modules only.
        base = kernel.modules.parents[3]
        if not (base / "lib").exists():
            (base / "lib").symlink_to("usr/lib")
        stages.run(["depmod", "-b", base, kernel.version])
    builtin = {
        module_name(line) for line in (kernel.modules / "modules.builtin").read_text().split()
    }
    files, load = resolve_modules(wanted, parse_modules_dep(dep_file.read_text()), builtin)
    target = tree / "usr/lib/modules" / kernel.version
    for rel in files:
        dest = target / re.sub(r"\.ko\.xz$", ".ko", rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        source = kernel.modules / rel
        if rel.endswith(".xz"):
            dest.write_bytes(lzma.decompress(source.read_bytes()))
        else:
            shutil.copy2(source, dest)
    for name in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        if (kernel.modules / name).exists():
            shutil.copy2(kernel.modules / name, target / name)
    conf = tree / MODULES_LOAD
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        "# Loaded by the agent at boot (kata-image).\n" + "".join(f"{n}\n" for n in load)
    )
    return load


def kernel_source(apt: PrivateApt, cache: Path, stages: Stages) -> tuple[Path, str]:
    """Debian's linux-source unpacked once under cache; returns (tree, package version)."""
    apt.update()
    version = apt.show(SOURCE_PACKAGE)["Version"]
    tree = cache / f"{SOURCE_PACKAGE}_{version}"
    if not (tree / ".complete").exists():
        (deb,) = apt.download([SOURCE_PACKAGE], cache / "debs")
        unpacked = cache / "unpacked"
        if unpacked.exists():
            shutil.rmtree(unpacked)
        stages.run(["dpkg-deb", "-x", deb, unpacked])
        (tarball,) = (unpacked / "usr/src").glob("linux-source-*.tar.*")
        if tree.exists():
            shutil.rmtree(tree)
        with tarfile.open(tarball) as tar:
            top = tar.next()
            assert top is not None
            tar.extractall(cache, filter="data")
        (cache / top.name.split("/")[0]).rename(tree)
        shutil.rmtree(unpacked)
        (tree / ".complete").touch()
    return tree, version


def merge_fragments(source: Path, out: Path, fragments: list[Path], stages: Stages) -> Path:
    """tinyconfig + our fragments (merge_config.sh -n) in the build folder `out`; fails
    listing every fragment line that did not survive in the final .config."""
    out.mkdir(parents=True, exist_ok=True)
    make: list[str | Path] = ["make", "-C", source, f"O={out}", "ARCH=x86_64"]
    stages.run([*make, "tinyconfig"])
    # merge_config.sh runs `make allnoconfig` itself with the merged file as the baseline.
    stages.run(
        [source / "scripts/kconfig/merge_config.sh", "-n", "-O", out, out / ".config",
         *fragments],
        cwd=source,
        env=dict(os.environ, ARCH="x86_64"),
    )  # fmt: skip
    config = out / ".config"
    lost = kconfig.lost_fragment_lines(fragments, kconfig.parse(config.read_text()))
    if lost:
        raise BuildError(
            "fragment options did not survive the merge (missing dependency?):\n  "
            + "\n  ".join(lost)
        )
    return config


STAMP = ".pykata-inputs"


def fragments_digest(fragments: list[Path]) -> str:
    """Digest of the fragments' settings (comments do not change the kernel)."""
    digest = hashlib.sha256()
    for fragment in fragments:
        for option, value in kconfig.fragment_lines(fragment):
            digest.update(f"{option}={value}\n".encode())
    return digest.hexdigest()


def current_build(out: Path, fragments: list[Path], package_version: str | None = None) -> bool:
    """Whether `out` holds a bzImage built from exactly these fragments (and, when given,
    this linux-source version)."""
    stamp = out / STAMP
    if not ((out / "arch/x86/boot/bzImage").exists() and stamp.exists()):
        return False
    try:
        inputs = json.loads(stamp.read_text())
    except json.JSONDecodeError:
        return False
    if package_version is not None and inputs.get("source") != package_version:
        return False
    return bool(inputs.get("fragments") == fragments_digest(fragments))


def build_kernel(apt: PrivateApt, cache: Path, fragments: list[Path], stages: Stages) -> Kernel:
    """Build bzImage from linux-source with our fragments; reused while the source version
    and the fragments are unchanged (ccache speeds up rebuilds when installed). One build at
    a time: concurrent builds in the same folder would mix their configurations."""
    with stages.stage("kernel source"):
        source, package_version = kernel_source(apt, cache / "source", stages)
    out = cache / "build"
    out.mkdir(parents=True, exist_ok=True)
    with (cache / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not current_build(out, fragments, package_version):
            (out / STAMP).unlink(missing_ok=True)
            with stages.stage("kernel config"):
                merge_fragments(source, out, fragments, stages)
            with stages.stage("kernel build"):
                jobs = str(os.cpu_count() or 1)
                cc = ["CC=ccache gcc"] if shutil.which("ccache") else []
                make: list[str | Path] = ["make", "-C", source, f"O={out}", "ARCH=x86_64"]
                make += [f"-j{jobs}", *cc]
                stages.run([*make, "bzImage"])
                # make re-runs kconfig; nothing may have changed what we checked.
                lost = kconfig.lost_fragment_lines(fragments, kconfig.read(out / ".config"))
                if lost:
                    raise BuildError("the build changed the config:\n  " + "\n  ".join(lost))
            inputs = {"source": package_version, "fragments": fragments_digest(fragments)}
            (out / STAMP).write_text(json.dumps(inputs))
        release = stages.output(
            ["make", "-s", "-C", source, f"O={out}", "ARCH=x86_64", "kernelrelease"]
        ).strip()
    return Kernel(
        source="build",
        version=release,
        package_version=package_version,
        image=out / "arch/x86/boot/bzImage",
        config=out / ".config",
        modules=None,
    )
