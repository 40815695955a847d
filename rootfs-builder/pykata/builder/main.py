"""kata-image: build the guest artifacts a Kata runtime boots.

kata-image setup                 install mkosi >= 25 and the host tools it needs
kata-image build [...]           kernel + initrd or disk image + manifest.json
kata-image kernel [...]          only the kernel (Debian's or built from source)
kata-image check-kernel CONFIG   does a kernel config have what the agent needs?
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pykata.builder import build, kconfig, layout
from pykata.builder.stages import BuildError, Stages


def _log_path(name: str) -> Path:
    return layout.cache_root() / "logs" / f"{name}.log"


def cmd_setup(args: argparse.Namespace) -> int:
    stages = Stages(_log_path("setup"))
    tool = build.setup(args.mirror, stages)
    print(f"mkosi {tool.version_text} ready ({stages.summary()})")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    stages = Stages(args.output / "kata-image.log")
    options = build.Options(
        flavour=args.flavour,
        kernel_source=args.kernel_source,
        output=args.output,
        clean=args.clean,
        mirror=args.mirror,
        kata_debug=args.kata_debug,
    )
    result = build.build(options, stages)
    state = "up to date (inputs unchanged)" if result.reused else "built"
    print(f"{result.artifact} {state}; kernel {result.kernel}; manifest {result.manifest}")
    print(stages.summary())
    return 0


def cmd_kernel(args: argparse.Namespace) -> int:
    stages = Stages(args.output / "kata-kernel.log")
    path = build.build_kernel_only(args.source, args.output, args.mirror, stages)
    print(f"kernel {path} ({stages.summary()})")
    return 0


def cmd_check_kernel(args: argparse.Namespace) -> int:
    config = kconfig.read(args.config)
    if not config:
        print(f"{args.config}: no CONFIG_ lines: not a kernel config", file=sys.stderr)
        return 2
    requirements = kconfig.parse_requirements(layout.REQUIRED_OPTIONS.read_text())
    problems = kconfig.check(config, requirements)
    modules = [r.option for r in requirements if config.get(r.option) == "m"]
    for problem in problems:
        print(f"missing: {problem}")
    if modules:
        print(f"as modules (load them at boot): {' '.join(modules)}")
    met = len(requirements) - len(problems)
    print(f"{args.config}: {met}/{len(requirements)} required options present")
    return 1 if problems else 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="kata-image", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True)
    mirror_help = "Debian archive URI for the guest (default: derived from this host's apt sources)"

    setup = sub.add_parser("setup", help="install mkosi >= 25 and its host tools")
    setup.add_argument("--mirror", help=mirror_help)
    setup.set_defaults(func=cmd_setup)

    bld = sub.add_parser("build", help="build kernel, initrd or disk image, manifest")
    bld.add_argument(
        "--flavour",
        choices=build.FLAVOURS,
        default="initrd",
        help="initrd: cpio, the agent is /init (default); image: ext4 disk, systemd starts it",
    )
    bld.add_argument(
        "--kernel-source",
        choices=build.KERNEL_SOURCES,
        default="debian",
        help="debian: trixie's cloud kernel + modules (default); build: ours, all built in",
    )
    bld.add_argument(
        "--output", type=Path, default=build.Options.output, help="default: build/ here"
    )
    bld.add_argument(
        "--clean",
        action="store_true",
        help="rebuild even if nothing changed, and drop mkosi's incremental cache",
    )
    bld.add_argument("--mirror", help=mirror_help)
    bld.add_argument(
        "--kata-debug",
        action="store_true",
        help="configuration.toml with the shim's, the hypervisor's and the agent's debug on",
    )
    bld.set_defaults(func=cmd_build)

    kern = sub.add_parser("kernel", help="fetch Debian's kernel or build ours")
    kern.add_argument(
        "--source",
        choices=build.KERNEL_SOURCES,
        default="debian",
        help="debian: trixie's cloud kernel (default); build: linux-source + kernel-config/",
    )
    kern.add_argument(
        "--output", type=Path, default=build.Options.output, help="default: build/ here"
    )
    kern.add_argument("--mirror", help=mirror_help)
    kern.set_defaults(func=cmd_kernel)

    check = sub.add_parser("check-kernel", help="check a kernel config against the agent's needs")
    check.add_argument("config", type=Path)
    check.set_defaults(func=cmd_check_kernel)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except BuildError as exc:
        print(f"kata-image: {exc}", file=sys.stderr)
        return 1
    except FileNotFoundError as exc:
        print(f"kata-image: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
