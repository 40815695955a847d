# The verbs people type. `sh .ci/bootstrap` provides `just` itself (in .venv/bin).
set shell := ["bash", "-euo", "pipefail", "-c"]

export PATH := justfile_directory() / ".venv/bin" + ":" + env_var("PATH")
python := justfile_directory() / ".venv/bin/python"

# Debian packages the project needs on the host (QEMU, virtiofsd, runc, busybox for test
# rootfs, tools to unpack mkosi and Debian packages, gcc + libc6-dev for the vsock test guest,
# containerd for the Kata tier).
host_packages := "qemu-system-x86 qemu-system-common qemu-utils runc busybox-static cpio zstd kmod e2fsprogs iproute2 procps psmisc binutils xz-utils gcc libc6-dev containerd"

default:
    @just --list

# Install host packages and the project (editable) with its dev tools.
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    t0=$(date +%s)
    if ! dpkg -s {{host_packages}} >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends {{host_packages}}
    fi
    [ -x {{python}} ] || python3 -m venv .venv
    stamp=.venv/.pykata-installed
    if [ ! -f $stamp ] || [ pyproject.toml -nt $stamp ]; then
        {{python}} -m pip install -q --disable-pip-version-check -e '.[dev,guest]'
        touch $stamp
    fi
    echo "setup: done in $(( $(date +%s) - t0 ))s"

# Regenerate agent/pykata/protocols from protocols/*.proto.
proto: setup
    {{python}} protocols/generate.py

# ruff (lint + format check) and mypy.
lint: setup
    ruff check agent host rootfs-builder tests protocols
    ruff format --check agent host rootfs-builder tests protocols
    mypy

# Format the code in place.
fmt: setup
    ruff format agent host rootfs-builder tests protocols
    ruff check --fix agent host rootfs-builder tests protocols

# Every test tier (lint, our guest kernel when not cached, unit, integration, security, vm,
# kata), with stage timings and one summary line. The kata tier needs KATA_SHIM (see README).
test: setup
    {{python}} tests/run_tiers.py lint kernel unit integration security vm kata

# One tier only: unit, integration, security, vm or kata (extra arguments go to pytest).
test-tier tier *args: setup
    {{python}} tests/run_tiers.py {{tier}} -- {{args}}

# Build the initrd (cached), boot it in QEMU, run a busybox container in it over hybrid vsock.
demo: setup
    {{python}} -m pykata.host.demo

# The real Kata shim (KATA_SHIM) under containerd runs busybox pods on our image, timed.
kata-demo: setup
    {{python}} tests/kata/demo.py

# Kata shim on our image vs containerd's runc shim: `ctr run --rm busybox true`, same run.
bench-kata *args: setup
    {{python}} tests/bench/bench_kata.py {{args}}

# ttRPC: Go reference client against the Go server and ours (calls/s, p50/p99, ratio).
bench-ttrpc: setup
    {{python}} tests/bench/bench_ttrpc.py

# Agent: container create+start, exec and stdout via the agent vs the OCI runtime alone; RSS.
bench-agent *args: setup
    {{python}} tests/bench/bench_agent.py {{args}}

# Guest image into build/: kernel, initrd (agent as /init) or `--flavour image`, manifest.json,
# configuration.toml (see `kata-image build --help`).
image *args: setup
    kata-image setup
    kata-image build {{args}}

# Guest kernel into build/: Debian's cloud kernel, or `just kernel --source build` for ours.
kernel *args: setup
    kata-image setup
    kata-image kernel {{args}}

# Image builder: build times cold/warm, initrd and disk image sizes, TCG boot to announce.
bench-image *args: setup
    {{python}} tests/bench/bench_image.py {{args}}

# vsock: one stream through our vhost-user-vsock back-end (TCG test guest) vs a unix socket pair.
bench-vsock *args: setup
    {{python}} tests/bench/bench_vsock.py {{args}}

# End to end: TCG boot to the first Health.Check; `kata-agent-ctl run` of `true`, VM vs host agent.
bench-e2e *args: setup
    {{python}} tests/bench/bench_e2e.py {{args}}

# Boot timeline per kernel (Debian's, ours when built), boots alternating: QEMU start -> kernel
# -> /init -> announce -> listening -> Health.Check -> CreateSandbox; table, JSON, chart
# (`--boots N --kernel debian|ours|both --initrd PATH --chart PATH --verbose-console`).
bench-boot *args: setup
    {{python}} tests/bench/bench_boot.py {{args}}

# Go ttRPC interop peer (containerd's ttrpc from Debian) into ~/.cache/pykata/go-ttrpc/.
peer-go-ttrpc *args:
    {{python}} tests/peers/go-ttrpc/build.py {{args}}

# vsock: a client redialling like the Kata Go shim while the test guest boots; refuse vs hold.
bench-vsock-dials *args: setup
    {{python}} tests/bench/bench_vsock_dials.py {{args}}

# Fuzz: N seeded ttRPC frames (raw, mutated envelopes, contract-built requests) against the
# agent (unshared mounts and network) and containerd's Go ttRPC; crashes, hangs, codes, RSS.
fuzz *args: setup
    {{python}} tests/bench/bench_fuzz.py {{args}}

# Hot upgrade: pause until Health.Check answers, longest gap in a container's output, RSS
# before/after; the agent on this host and in a TCG guest (`--no-vm`: host only).
bench-upgrade *args: setup
    {{python}} tests/bench/bench_upgrade.py {{args}}

# Soak: N container lifecycles + M execs through the agent; leaked mounts, fds, zombies,
# threads, cgroups; RSS; rates against runc directly.
soak *args: setup
    {{python}} tests/bench/bench_soak.py {{args}}

# Agent memory by import: the guest's Python chrooted in the unpacked initrd, step by step
# (interpreter, asyncio, protobuf/ttRPC, agent start, AgentService) and per subsystem.
bench-memory *args: setup
    {{python}} tests/bench/bench_memory.py {{args}}
