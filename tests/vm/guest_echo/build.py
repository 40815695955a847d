"""Build (or reuse) the vsock test guest: a kernel and a gzip cpio initrd.

Inputs: the host release's ``linux-image-cloud-amd64`` (its virtio/vsock/virtiofs modules
with their dependencies, loaded by busybox ``insmod``), ``busybox-static``, ``init.sh`` and
``vsock_echo.c`` compiled with ``gcc -static``. Outputs are cached under
``${XDG_CACHE_HOME:-~/.cache}/pykata/guest-echo/<hash of inputs>/``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
KERNEL_META = "linux-image-cloud-amd64"
# The drivers the guest loads, in this order (dependencies are added in front).
MODULES = ["virtio_pci", "vmw_vsock_virtio_transport", "virtiofs"]


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pykata"


def _run(*cmd: str, cwd: Path | None = None) -> str:
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout


def kernel_package() -> tuple[str, str]:
    """``(package, version)`` of the cloud kernel the host release's metapackage points at."""
    info = _run("apt-cache", "show", "--no-all-versions", KERNEL_META)
    match = re.search(r"^Depends:.*?(linux-image-[\w.+-]+-cloud-amd64) \(= ([^)]+)\)", info, re.M)
    if match is None:
        raise RuntimeError(f"cannot find the kernel package {KERNEL_META} depends on")
    return match.group(1), match.group(2)


def fetch_kernel(package: str, version: str) -> Path:
    """The kernel package unpacked into the cache (downloaded once)."""
    root = cache_root() / "kernels" / f"{package}_{version}"
    if (root / ".complete").exists():
        return root
    with tempfile.TemporaryDirectory(dir=cache_root()) as tmp:
        _run("apt-get", "download", f"{package}={version}", cwd=Path(tmp))
        (deb,) = Path(tmp).glob("*.deb")
        unpacked = Path(tmp) / "root"
        _run("dpkg-deb", "-x", str(deb), str(unpacked))
        shutil.rmtree(root, ignore_errors=True)
        root.parent.mkdir(parents=True, exist_ok=True)
        unpacked.rename(root)
    (root / ".complete").touch()
    return root


def module_order(kernel_root: Path, wanted: list[str]) -> list[Path]:
    """``wanted`` modules and their dependencies (from modinfo), dependencies first."""
    files = {
        ko.name.removesuffix(".ko").replace("-", "_"): ko
        for ko in (kernel_root / "lib" / "modules").rglob("*.ko")
    }
    order: list[Path] = []

    def visit(name: str) -> None:
        ko = files.get(name.replace("-", "_"))
        if ko is None:
            raise RuntimeError(f"kernel has no module {name}")
        if ko in order:
            return
        for dep in _run("modinfo", "-F", "depends", str(ko)).strip().split(","):
            if dep:
                visit(dep)
        order.append(ko)

    for name in wanted:
        visit(name)
    return order


def _inputs_hash(package: str, version: str) -> str:
    h = hashlib.sha256(f"{package}={version}\n{MODULES}\n".encode())
    h.update(_run("dpkg-query", "-W", "busybox-static").encode())
    for name in ("build.py", "init.sh", "vsock_echo.c"):
        h.update((HERE / name).read_bytes())
    return h.hexdigest()[:16]


def build_guest() -> GuestImage:
    package, version = kernel_package()
    out = cache_root() / "guest-echo" / _inputs_hash(package, version)
    image = GuestImage(out / "vmlinuz", out / "initrd.img")
    if image.kernel.exists() and image.initrd.exists():
        return image
    cache_root().mkdir(parents=True, exist_ok=True)
    kernel_root = fetch_kernel(package, version)
    with tempfile.TemporaryDirectory(dir=cache_root()) as tmp:
        staging = Path(tmp) / "out"
        rootfs = Path(tmp) / "root"
        for sub in ("bin", "lib/modules", "proc", "sys", "dev"):
            (rootfs / sub).mkdir(parents=True)
        shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
        shutil.copy2(HERE / "init.sh", rootfs / "init")
        (rootfs / "init").chmod(0o755)
        _run(
            "gcc", "-static", "-O2", "-Wall", "-o", str(rootfs / "bin" / "vsock-echo"),
            str(HERE / "vsock_echo.c"),
        )  # fmt: skip
        names = []
        for ko in module_order(kernel_root, MODULES):
            shutil.copy2(ko, rootfs / "lib" / "modules" / ko.name)
            names.append(ko.name)
        (rootfs / "lib" / "modules" / "load.order").write_text("\n".join(names) + "\n")
        staging.mkdir()
        (vmlinuz,) = (kernel_root / "boot").glob("vmlinuz-*")
        shutil.copy2(vmlinuz, staging / "vmlinuz")
        listing = "\n".join(str(p.relative_to(rootfs)) for p in sorted(rootfs.rglob("*")))
        cpio = subprocess.run(
            ["cpio", "--quiet", "-o", "-H", "newc", "--owner=0:0"],
            cwd=rootfs, input=listing.encode(), check=True, capture_output=True,
        ).stdout  # fmt: skip
        (staging / "initrd.img").write_bytes(
            subprocess.run(["gzip", "-6"], input=cpio, check=True, capture_output=True).stdout
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
    for stale in out.parent.iterdir():  # builds of older inputs are never used again
        if stale != out:
            shutil.rmtree(stale, ignore_errors=True)
    return image


if __name__ == "__main__":
    print(build_guest())
