"""``kata-agent-ctl vm up|down|status``: a named VM that outlives the command.

``vm up`` boots the kernel + initrd (default: the image builder's ``build/``) with the
shared folder and vsock, waits until the agent's vsock port accepts, and records the VM
in ``${XDG_RUNTIME_DIR:-/run}/pykata/vms/<name>/vm.json`` for ``--vm NAME`` elsewhere.
``--net CIDR`` adds a virtio-net NIC: its tap lives in a network namespace of the VM's own
(a holder process, recorded as pid ``netns``, killed by ``vm down``) with the CIDR's first
address; ``run --vm NAME`` gives the guest's NIC the CIDR's address and a default route via
the tap end before its first container. ``--hotplug-ports N`` adds N empty PCIe root ports
(recorded in the state file) on which ``run --volume`` hot-plugs disk images.
``--ops-port P`` boots the agent with ``agent.ops_vport=P`` and records the ops channel's
address (the same hybrid vsock socket, port P) for ``ops --vm NAME``.
Exit codes: 0 ok (status: running), 1 status: not (fully) running, 2 usage (unknown VM,
missing files, already running), 3 the VM failed to come up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

from pykata.host.vm import netns, state
from pykata.host.vm.runner import VM, Nic, VMError, stop_detached

DEFAULT_NAME = "pykata"
DEFAULT_KERNEL = Path("build/vmlinuz")
DEFAULT_INITRD = Path("build/kata-initrd.img")
TAP = "tap0"


def guest_cidr(text: str) -> str:
    try:
        netns.host_end(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


MAX_HOTPLUG_PORTS = 16  # slots 0x10-0x1f


def port_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= count <= MAX_HOTPLUG_PORTS:
        raise argparse.ArgumentTypeError(f"between 0 and {MAX_HOTPLUG_PORTS}")
    return count


def add_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register ``vm`` on the CLI's subparsers; the handler is ``args.vm_handler(args)``."""
    vm = subparsers.add_parser("vm", help="start, stop and inspect a local microVM")
    verbs = vm.add_subparsers(dest="vm_verb", required=True, metavar="VERB")
    up = verbs.add_parser("up", help="boot a VM and wait for its agent")
    up.add_argument("name", nargs="?", default=DEFAULT_NAME)
    up.add_argument("--kernel", type=Path, default=DEFAULT_KERNEL)
    up.add_argument("--initrd", type=Path, default=DEFAULT_INITRD)
    up.add_argument(
        "--shared-dir",
        type=Path,
        help="host folder shared as kataShared (default: "
        "$XDG_RUNTIME_DIR/pykata/shared/sandboxes/NAME/shared, Kata's layout)",
    )
    up.add_argument("--memory", type=int, default=1024, help="MiB (default 1024)")
    up.add_argument("--cpus", type=int, default=1)
    up.add_argument(
        "--accel", choices=["auto", "kvm", "tcg"], default="auto", help="auto probes KVM"
    )
    up.add_argument("--append", default="", help="extra kernel command line")
    up.add_argument(
        "--net",
        type=guest_cidr,
        metavar="CIDR",
        help="a virtio-net NIC with this guest address (e.g. 10.99.0.2/24) on a tap in a "
        "network namespace of the VM's own, the tap at the network's first address",
    )
    up.add_argument(
        "--hotplug-ports",
        type=port_count,
        default=0,
        metavar="N",
        help="N empty PCIe root ports for disks hot-plugged later (`run --volume`), one each",
    )
    up.add_argument(
        "--ops-port",
        type=int,
        default=0,
        metavar="P",
        help="serve the agent's ops channel on vsock port P (agent.ops_vport; e.g. 1027)",
    )
    up.add_argument(
        "--wait-port",
        type=int,
        default=state.AGENT_PORT,
        help="guest vsock port to wait for (default: the agent's 1024; 0: do not wait)",
    )
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for it")
    down = verbs.add_parser("down", help="stop a VM and remove its sockets and state")
    down.add_argument("name", nargs="?", default=DEFAULT_NAME)
    down.add_argument(
        "--powerdown-timeout",
        type=float,
        default=0.0,
        help="ask the guest to power off (ACPI) and wait this long before quitting QEMU",
    )
    status = verbs.add_parser("status", help="show VMs and whether their processes run")
    status.add_argument("name", nargs="?", help="one VM (default: all)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    vm.set_defaults(vm_handler=run)
    return vm


def run(args: argparse.Namespace) -> int:
    try:
        if args.vm_verb == "up":
            return asyncio.run(up(args))
        if args.vm_verb == "down":
            return asyncio.run(down(args.name, args.powerdown_timeout))
        return status(args.name, args.json)
    except ValueError as exc:  # a bad VM name
        print(f"kata-agent-ctl vm: {exc}", file=sys.stderr)
        return 2


async def up(args: argparse.Namespace) -> int:
    for path in (args.kernel, args.initrd):
        if not path.is_file():
            print(f"kata-agent-ctl vm up: {path} not found (build it: just image)", file=sys.stderr)
            return 2
    try:
        old = state.load(args.name)
    except FileNotFoundError:
        pass
    else:
        if any(old.running().values()):
            print(f"kata-agent-ctl vm up: VM {args.name} is already running", file=sys.stderr)
            return 2
    t0 = time.monotonic()
    workdir = state.vm_dir(args.name)
    shared = args.shared_dir or state.default_shared_dir(args.name)
    holder: subprocess.Popen[bytes] | None = None
    net: dict[str, str] = {}
    nic: Nic | None = None
    if args.net:
        tap_address, gateway = netns.host_end(args.net)
        try:
            # Tagged with the workdir: `vm status`/`vm down` know it as this VM's.
            holder = netns.start_holder(str(workdir), detach=True)
        except (OSError, ValueError) as exc:
            print(f"kata-agent-ctl vm up: network namespace: {exc}", file=sys.stderr)
            return 3
        net = {"mac": netns.random_mac(), "address": args.net, "gateway": gateway, "tap": TAP}
        nic = Nic(mac=net["mac"], netns_pid=holder.pid, tap=TAP, host_address=tap_address)
    vm = VM(
        args.kernel.resolve(),
        args.initrd.resolve(),
        shared_dir=shared,
        workdir=workdir,
        name=args.name,
        memory_mib=args.memory,
        cpus=args.cpus,
        append=f"{args.append} agent.ops_vport={args.ops_port}" if args.ops_port else args.append,
        accel=None if args.accel == "auto" else args.accel,
        detach=True,
        nic=nic,
        hotplug_ports=args.hotplug_ports,
    )
    try:
        await vm.start()
        vm_state = state.VMState(
            name=args.name,
            agent_address=vm.agent_address,
            shared_dir=str(shared),
            console_log=str(vm.console_log),
            workdir=str(workdir),
            accel=vm.accel or "tcg",
            pids={**vm.pids, "netns": holder.pid} if holder else vm.pids,
            net=net,
            hotplug_ports=args.hotplug_ports,
            ops_address=vm.vsock_address(args.ops_port) if args.ops_port else "",
        )
        vm_state.save()
        if args.wait_port:
            await vm.wait_port(args.wait_port, within=args.timeout)
    except (VMError, OSError) as exc:
        print(f"kata-agent-ctl vm up: {exc}", file=sys.stderr)
        await vm.stop()
        if holder is not None:
            holder.kill()
            holder.wait()
        state.VMState.remove_named(args.name)
        return 3
    print(f"VM {args.name} up ({vm.accel}) in {time.monotonic() - t0:.1f}s")
    print(f"  agent:   {vm.agent_address}")
    if args.ops_port:
        print(f"  ops:     {vm.vsock_address(args.ops_port)}")
    print(f"  shared:  {shared}")
    print(f"  console: {vm.console_log}")
    if net:
        print(f"  network: {net['address']} ({net['mac']}), gateway {net['gateway']} on {TAP}")
        print(f"           in the network namespace of pid {holder.pid if holder else '?'}")
    return 0


async def down(name: str, powerdown_timeout: float) -> int:
    try:
        vm_state = state.load(name)
    except FileNotFoundError:
        print(f"kata-agent-ctl vm down: no VM named {name}", file=sys.stderr)
        return 2
    await stop_detached(
        Path(vm_state.workdir), vm_state.pids, Path(vm_state.shared_dir), powerdown_timeout
    )
    vm_state.remove()
    print(f"VM {name} down")
    return 0


def status(name: str | None, as_json: bool) -> int:
    names = [name] if name else state.names()
    report = []
    for each in names:
        try:
            vm_state = state.load(each)
        except FileNotFoundError:
            print(f"kata-agent-ctl vm status: no VM named {each}", file=sys.stderr)
            return 2
        report.append((vm_state, vm_state.running()))
    if as_json:
        print(json.dumps([{**vars(s), "running": r} for s, r in report], indent=2))
    else:
        for s, r in report:
            procs = " ".join(f"{role}={'up' if alive else 'down'}" for role, alive in r.items())
            print(f"{s.name}: {s.agent_address} ({s.accel}) {procs}")
    return 0 if report and all(all(r.values()) for _, r in report) else 1
