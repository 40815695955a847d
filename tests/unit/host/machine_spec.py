"""A MachineSpec for command-line tests: fixed paths, one vCPU, TCG; tests change fields."""

from __future__ import annotations

from pathlib import Path

from pykata.host.vm import qemu


def spec(**changes: object) -> qemu.MachineSpec:
    base = dict(
        kernel=Path("/k"),
        initrd=Path("/i"),
        append="",
        accel="tcg",
        memory_mib=512,
        cpus=1,
        console_log=Path("/w/console.log"),
        qmp_socket=Path("/w/qmp.sock"),
        vsock=qemu.VhostUserVsock(Path("/w/vhost-vsock.sock")),
        virtiofs_socket=None,
    )
    return qemu.MachineSpec(**(base | changes))  # type: ignore[arg-type]
