"""`kata-image build`: kernel + mkosi rootfs -> vmlinuz, kata-initrd.img / kata-rootfs.img,
manifest.json and configuration.toml (a Kata configuration for them) in the output folder.

Two levels of reuse keep a repeated build fast: when the inputs' hash matches the output's
manifest nothing runs at all, and otherwise mkosi's incremental cache skips package
installation unless the package set changed. `--clean` drops both.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pykata.builder import (
    apt,
    disk,
    hosttools,
    kataconfig,
    kconfig,
    kernel,
    layout,
    manifest,
    mkosi,
    slim,
    wheels,
)
from pykata.builder.stages import BuildError, Stages

FLAVOURS = ("initrd", "image")
KERNEL_SOURCES = ("debian", "build")
KERNEL_FILE = "vmlinuz"
ARTIFACT = {"initrd": "kata-initrd.img", "image": "kata-rootfs.img"}
MKOSI_OUTPUT = {"initrd": "kata-initrd.cpio.zst", "image": "kata-rootfs"}
UNIT_DIR = Path("usr/lib/systemd/system")
# Where the initrd's finalize script finds slim.py (it deletes the folder afterwards).
SLIM_SCRIPT = Path("usr/lib/pykata-build/slim.py")
# The root file system of the image flavour is mounted by the kernel itself.
IMAGE_BOOT_OPTIONS = ("CONFIG_VIRTIO_BLK", "CONFIG_EXT4_FS", "CONFIG_VIRTIO_PCI")


@dataclass(frozen=True)
class Options:
    flavour: str = "initrd"
    kernel_source: str = "debian"
    output: Path = Path("build")
    clean: bool = False
    mirror: str | None = None
    kata_debug: bool = False  # debug switches on in configuration.toml


@dataclass(frozen=True)
class Result:
    output: Path
    kernel: Path
    artifact: Path
    manifest: Path
    reused: bool  # nothing was rebuilt: the inputs' hash matched


def prepare_apt(cache: Path, mirror: str | None, stages: Stages) -> apt.PrivateApt:
    mirrors = apt.derive_mirrors(apt.host_entries(), mirror)
    stages.log(f"guest archive {mirrors.archive}, security {mirrors.security}")
    return apt.PrivateApt(cache / "apt", mirrors, stages)


def setup(mirror: str | None, stages: Stages) -> mkosi.Mkosi:
    """Install mkosi's host tools and mkosi >= 25 (trixie's, unpacked privately if needed)."""
    cache = layout.cache_root()
    with stages.stage("host tools"):
        hosttools.ensure({**mkosi.HOST_TOOLS, **kernel.CONFIG_TOOLS}, stages)
    with stages.stage("mkosi"):
        found = mkosi.host_mkosi() or mkosi.private_mkosi(cache / "mkosi")
        if found is None:
            found = mkosi.install(cache / "mkosi", prepare_apt(cache, mirror, stages), stages)
        stages.log(f"mkosi {found.version_text}: {' '.join(found.argv)}")
    return found


def get_kernel(source: str, apt_: apt.PrivateApt, cache: Path, stages: Stages) -> kernel.Kernel:
    if source == "debian":
        with stages.stage("kernel (debian)"):
            return kernel.debian_kernel(apt_, cache / "kernel/debian", stages)
    hosttools.ensure(kernel.BUILD_TOOLS, stages)
    return kernel.build_kernel(apt_, cache / "kernel", layout.fragments(), stages)


def _hash_files(digest: hashlib._Hash, root: Path, paths: list[Path]) -> None:
    for path in sorted(paths):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")


def input_hash(options: Options, kern: kernel.Kernel, tool: mkosi.Mkosi, wheel_dir: Path) -> str:
    """Everything the artifacts are made of, except the archive's current package versions
    (mkosi's cache pins those until --clean)."""
    digest = hashlib.sha256()
    for text in (
        options.flavour,
        kern.source,
        kern.version,
        kern.package_version,
        manifest.sha256(kern.config),
        manifest.sha256(kern.image),
        tool.version_text,
        *sorted(p.name for p in wheel_dir.glob("*.whl")),
    ):
        digest.update(text.encode() + b"\0")
    for data in (layout.MKOSI_CONFIG, layout.KERNEL_CONFIG, layout.SYSTEMD_UNITS):
        _hash_files(digest, layout.DATA, list(data.rglob("*")))
    # The guest's Python code, and this builder's, which decides what goes where.
    for package in (*wheels.guest_package_dirs(), Path(__file__).parent):
        _hash_files(digest, package.parent, list(package.rglob("*.py")))
    return digest.hexdigest()


def make_extra_tree(
    options: Options, kern: kernel.Kernel, wheel_dir: Path, tree: Path, stages: Stages
) -> tuple[str, list[str]]:
    """The files mkosi copies into the image: agent, wheels, modules, units or /init."""
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    version = wheels.install_agent(tree)
    wheels.install_wheels(wheel_dir, tree)
    modules: list[str] = []
    if kern.modules is not None:
        wanted = kernel.read_module_list(layout.DEBIAN_MODULES)
        modules = kernel.install_modules(kern, wanted, tree, stages)
    if options.flavour == "initrd":
        # /init itself is written by slim.py, with the interpreter flags it compiles for.
        (tree / SLIM_SCRIPT).parent.mkdir(parents=True)
        shutil.copy2(slim.__file__, tree / SLIM_SCRIPT)
    else:
        units = tree / UNIT_DIR
        units.mkdir(parents=True)
        for unit in sorted(layout.SYSTEMD_UNITS.iterdir()):
            shutil.copy2(unit, units / unit.name)
        default = tree / "etc/systemd/system/default.target"
        default.parent.mkdir(parents=True)
        default.symlink_to(f"/{UNIT_DIR}/kata-containers.target")
    return version, modules


def mkosi_args(tool: mkosi.Mkosi, flavour: str, sandbox: Path) -> list[str | Path]:
    """mkosi with our configuration, a flavour's profile, apt sources and caches."""
    cache = layout.cache_root() / "mkosi"
    return [
        *tool.argv, "--directory", layout.MKOSI_CONFIG, "--profile", flavour,
        "--sandbox-tree", sandbox,
        # One incremental cache per flavour: their package sets differ.
        "--cache-directory", cache / flavour,
        "--package-cache-directory", cache / "packages",
    ]  # fmt: skip


def run_mkosi(
    tool: mkosi.Mkosi, options: Options, work: Path, extra: Path, sandbox: Path, stages: Stages
) -> Path:
    out = work / "out"
    (work / "ws").mkdir(parents=True, exist_ok=True)
    force = ["--force", "--force"] if options.clean else ["--force"]
    stages.run(
        [
            *mkosi_args(tool, options.flavour, sandbox), "--extra-tree", extra,
            "--output-dir", out, "--workspace-directory", work / "ws", *force, "build",
        ],
        env=tool.env(),
    )  # fmt: skip
    return out


def mkosi_summary(tool: mkosi.Mkosi, flavour: str, sandbox: Path) -> str:
    """`mkosi summary` of a flavour: parses and validates the whole configuration."""
    stages = Stages(layout.cache_root() / "logs" / f"summary-{flavour}.log")
    return stages.output([*mkosi_args(tool, flavour, sandbox), "summary"], env=tool.env())


def build(options: Options, stages: Stages) -> Result:
    """Build (or reuse) one flavour; concurrent builds of a flavour wait for each other,
    since they share mkosi's cache and the work folder."""
    lock_path = layout.cache_root() / "work" / f"{options.flavour}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build(options, stages)


def _build(options: Options, stages: Stages) -> Result:
    if options.flavour not in FLAVOURS:
        raise BuildError(f"unknown flavour {options.flavour!r} (choose from {FLAVOURS})")
    if options.kernel_source not in KERNEL_SOURCES:
        raise BuildError(f"unknown kernel source {options.kernel_source!r}")
    t0 = time.monotonic()
    cache = layout.cache_root()
    output = options.output
    work = cache / "work" / options.flavour
    with stages.stage("prepare"):
        tool = mkosi.locate(cache / "mkosi")
        missing_tools = hosttools.missing(mkosi.HOST_TOOLS)
        if missing_tools:
            raise BuildError(f"missing host packages {missing_tools}: run `kata-image setup`")
        apt_ = prepare_apt(cache, options.mirror, stages)
    kern = get_kernel(options.kernel_source, apt_, cache, stages)
    if options.flavour == "image":
        config = kconfig.read(kern.config)
        not_builtin = [opt for opt in IMAGE_BOOT_OPTIONS if config.get(opt) != "y"]
        if not_builtin:
            raise BuildError(
                f"the image flavour needs {', '.join(not_builtin)} built into the kernel "
                f"(this {kern.source} kernel has them as modules or not at all): "
                "use --kernel-source build"
            )
    with stages.stage("wheels"):
        wheel_dir = wheels.download(wheels.guest_requirements(), cache / "wheels", stages)
    digest = input_hash(options, kern, tool, wheel_dir)
    artifact = output / ARTIFACT[options.flavour]
    if not options.clean and manifest.up_to_date(output, digest):
        stages.log("inputs unchanged: reusing " + str(output))
        write_configuration(options, output / KERNEL_FILE, artifact)
        return Result(output, output / KERNEL_FILE, artifact, output / manifest.MANIFEST, True)
    with stages.stage("extra tree"):
        agent_version, modules = make_extra_tree(options, kern, wheel_dir, work / "extra", stages)
        apt.write_sandbox_sources(work / "sandbox", apt_.mirrors)
    with stages.stage(f"mkosi build ({options.flavour})"):
        out = run_mkosi(tool, options, work, work / "extra", work / "sandbox", stages)
    output.mkdir(parents=True, exist_ok=True)
    with stages.stage("outputs"):
        for stale in [*ARTIFACT.values(), manifest.MANIFEST]:
            (output / stale).unlink(missing_ok=True)
        shutil.copy2(kern.image, output / KERNEL_FILE)
        if options.flavour == "initrd":
            shutil.copy2(out / MKOSI_OUTPUT["initrd"], artifact)
        else:
            disk.make_disk(out / MKOSI_OUTPUT["image"], artifact, stages)
        mkosi_manifest = next(out.glob("*.manifest"))
        result = manifest.Manifest(
            flavour=options.flavour,
            kernel={
                "source": kern.source,
                "version": kern.version,
                "package_version": kern.package_version,
                "config_sha256": manifest.sha256(kern.config),
            },
            agent_version=agent_version,
            mkosi_version=tool.version_text,
            debian_packages=manifest.debian_packages(mkosi_manifest),
            wheels=wheels.wheel_versions(wheel_dir),
            modules=modules,
            input_hash=digest,
            build_seconds=round(time.monotonic() - t0, 1),
            built_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        result.add_files(output, [KERNEL_FILE, artifact.name])
        path = result.write(output)
        write_configuration(options, output / KERNEL_FILE, artifact)
    return Result(output, output / KERNEL_FILE, artifact, path, False)


def write_configuration(options: Options, kernel_path: Path, artifact: Path) -> None:
    """Written on every build, reused or not: it names this installation's launcher."""
    artifacts = kataconfig.Artifacts(kernel_path, options.flavour, artifact)
    text = kataconfig.configuration(artifacts, kataconfig.tools_dir(), options.kata_debug)
    (options.output / kataconfig.CONFIGURATION).write_text(text)


def build_kernel_only(source: str, output: Path, mirror: str | None, stages: Stages) -> Path:
    """`kata-image kernel`: the kernel and its config into output."""
    cache = layout.cache_root()
    with stages.stage("apt"):
        apt_ = prepare_apt(cache, mirror, stages)
    kern = get_kernel(source, apt_, cache, stages)
    output.mkdir(parents=True, exist_ok=True)
    shutil.copy2(kern.image, output / KERNEL_FILE)
    shutil.copy2(kern.config, output / "kernel.config")
    return output / KERNEL_FILE
