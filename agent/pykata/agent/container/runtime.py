"""The OCI runtime adapter: crun (preferred) or runc, which share one command line.

The agent prepares bundles and holds stdio; namespaces, seccomp and cgroup setup are the
runtime's job. Every invocation goes through the Reaper (the agent reaps all children).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import signal
import time
from typing import Any

from pykata.agent import log
from pykata.agent.cgroups import CONTAINER_ROOT
from pykata.agent.errors import Internal, Unavailable
from pykata.agent.mount import fstype_of
from pykata.agent.process.process import ChildStdio
from pykata.agent.process.stdio import ConsoleSocket
from pykata.agent.reaper import Reaper, exit_code

logger = log.get("runtime")

CANDIDATES = ("crun", "runc")
STATE_ROOT = "/run/kata-agent"
COMMAND_TIMEOUT = 60.0
MFD_EXEC = 0x0010  # linux/memfd.h; not in the os module
# The seals crun's own copy carries, all of them: crun checks for exactly these.
SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


class RuntimeFailure(Internal):
    """The OCI runtime refused or failed a command (its own message included)."""


def root_is_initramfs() -> bool:
    """pivot_root(2) cannot leave an initramfs: the runtime must use --no-pivot there."""
    return fstype_of("/") in ("rootfs", "ramfs")


def sealed_copy(binary: str) -> int | None:
    """A sealed in-memory copy of ``binary`` (an fd, close-on-exec), to run instead of the
    file; None for a script (its interpreter could not open a close-on-exec fd) or where
    the kernel cannot make one.

    Against CVE-2019-5736 (a container overwriting the runtime's binary through
    /proc/self/exe), crun copies itself into a sealed memfd and re-executes from it at
    every command, unless it already runs from one. Made once here, the copy saves each
    command that second exec, the copy and the second dynamic link (~70 ms of each crun
    command under TCG) and keeps the protection: nothing can write a sealed memfd.
    """
    with open(binary, "rb") as source:
        if os.pread(source.fileno(), 4, 0) != b"\x7fELF":
            return None
        fd = _memfd("runtime:" + os.path.basename(binary))
        if fd is None:
            return None
        try:
            size = os.fstat(source.fileno()).st_size
            copied = 0
            while copied < size:
                sent = os.sendfile(fd, source.fileno(), copied, size - copied)
                if sent == 0:
                    raise OSError(errno.EIO, f"{binary} shrank while copied")
                copied += sent
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
        except BaseException:
            os.close(fd)
            raise
    return fd


def _memfd(name: str) -> int | None:
    flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
    try:
        # Since Linux 6.3 a memfd is executable only when asked (vm.memfd_noexec);
        # older kernels refuse the flag.
        try:
            return os.memfd_create(name, flags | MFD_EXEC)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            return os.memfd_create(name, flags)
    except OSError as exc:
        logger.warning("no sealed copy of the runtime", extra={"error": str(exc)})
        return None


class OciRuntime:
    def __init__(self, binary: str, reaper: Reaper, *, no_pivot: bool) -> None:
        self.binary = binary
        self.name = os.path.basename(binary)
        self.reaper = reaper
        self.no_pivot = no_pivot
        self.root = os.path.join(STATE_ROOT, self.name)
        self._copy = sealed_copy(binary)
        self.executable = binary if self._copy is None else f"/proc/self/fd/{self._copy}"

    def close(self) -> None:
        """Drop the sealed copy (a runtime not used after all)."""
        if self._copy is not None:
            os.close(self._copy)
            self._copy = None
            self.executable = self.binary

    def _argv(self, *args: str, log_file: str | None = None) -> list[str]:
        argv = [self.binary, "--root", self.root]
        if log_file is not None:
            argv += ["--log", log_file, "--log-format", "json"]
        return [*argv, *args]

    async def _call(self, *args: str) -> bytes:
        argv = self._argv(*args)
        started = time.monotonic()
        code, out, err = await self.reaper.run(
            argv, timeout=COMMAND_TIMEOUT, executable=self.executable
        )
        _log_command(args[0], started, code)
        if code != 0:
            message = (err or out).decode(errors="replace").strip()
            raise RuntimeFailure(f"{self.name} {args[0]} failed (exit {code}): {message}")
        return out

    async def _hand_over(
        self,
        args: list[str],
        stdio: ChildStdio | None,
        console: ConsoleSocket | None,
        log_file: str,
    ) -> int | None:
        """Run a create/exec that hands a process over to us; the pty master if any.

        The runtime's own stdio is the process's: its errors go to ``log_file`` instead.
        """
        pid = self.reaper.spawn(
            self._argv(*args, log_file=log_file),
            stdin=stdio.stdin if stdio else None,
            stdout=stdio.stdout if stdio else None,
            stderr=stdio.stderr if stdio else None,
            executable=self.executable,
        )
        started = time.monotonic()
        status_fut = self.reaper.watch(pid)
        master_task = asyncio.ensure_future(console.receive_master()) if console else None
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                code = exit_code(await asyncio.shield(status_fut))
                _log_command(args[0], started, code)
                if code != 0:
                    raise RuntimeFailure(
                        f"{self.name} {args[0]} failed (exit {code}): {read_log_errors(log_file)}"
                    )
                return await master_task if master_task else None
        except BaseException:
            if not status_fut.done():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if master_task is not None:
                master_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    os.close(await master_task)
            raise

    async def create(
        self,
        container_id: str,
        bundle: str,
        *,
        stdio: ChildStdio | None,
        console: ConsoleSocket | None,
    ) -> tuple[int, int | None]:
        """Create the container (its process waits for start): (pid, pty master or None)."""
        pid_file = os.path.join(bundle, "init.pid")
        log_file = os.path.join(bundle, "runtime.log")
        args = ["create", "--bundle", bundle, "--pid-file", pid_file]
        if self.no_pivot:
            args.append("--no-pivot")
        if console is not None:
            args += ["--console-socket", console.path]
        master = await self._hand_over([*args, container_id], stdio, console, log_file)
        return read_pid(pid_file), master

    async def exec(
        self,
        container_id: str,
        bundle: str,
        exec_id: str,
        process: dict[str, Any],
        *,
        stdio: ChildStdio | None,
        console: ConsoleSocket | None,
    ) -> tuple[int, int | None]:
        """Start one more process in the container: (pid, pty master or None)."""
        process_file = os.path.join(bundle, f"exec-{exec_id}.json")
        pid_file = os.path.join(bundle, f"exec-{exec_id}.pid")
        log_file = os.path.join(bundle, f"exec-{exec_id}.log")
        write_json(process_file, process)
        args = ["exec", "--detach", "--process", process_file, "--pid-file", pid_file]
        if console is not None:
            args += ["--console-socket", console.path]
        try:
            master = await self._hand_over([*args, container_id], stdio, console, log_file)
            return read_pid(pid_file), master
        finally:
            for path in (process_file, pid_file, log_file):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    async def start(self, container_id: str) -> None:
        await self._call("start", container_id)

    async def delete(self, container_id: str) -> None:
        await self._call("delete", "--force", container_id)

    async def pause(self, container_id: str) -> None:
        await self._call("pause", container_id)

    async def resume(self, container_id: str) -> None:
        await self._call("resume", container_id)

    async def update(self, container_id: str, bundle: str, resources: dict[str, Any]) -> None:
        # A file rather than "-": not every runtime reads the resources from stdin.
        path = os.path.join(bundle, "resources.json")
        write_json(path, resources)
        try:
            await self._call("update", "--resources", path, container_id)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    async def probe(self) -> str | None:
        """Cheap probe: can this runtime create (and delete) a container here? Why not.

        crun 1.8, for one, refuses a hybrid cgroup v1/v2 layout; only trying tells.
        """
        import tempfile  # once per agent, at the first container: it pulls in random, hashlib

        os.makedirs(STATE_ROOT, exist_ok=True)
        probe_id = f"kata-agent-probe-{os.getpid()}"
        with tempfile.TemporaryDirectory(dir=STATE_ROOT, prefix="probe-") as bundle:
            # crun creates its device nodes in the rootfs's /dev: it must exist.
            for path in ("rootfs", "rootfs/dev", "rootfs/proc"):
                os.mkdir(os.path.join(bundle, path))
            # Never run (the probe container is not started), but runtimes check it exists.
            os.close(os.open(os.path.join(bundle, "rootfs", "probe"), os.O_CREAT, 0o755))
            write_json(os.path.join(bundle, "config.json"), probe_spec(probe_id))
            # What the runtime prints before its log is set up (bad usage, say) lands here.
            err_path = os.path.join(bundle, "stderr")
            err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                await self.create(probe_id, bundle, stdio=ChildStdio(None, None, err), console=None)
            except (RuntimeFailure, OSError, ValueError) as exc:
                stderr = read_text(err_path).strip()
                return f"{exc}{f' (stderr: {stderr})' if stderr else ''}"
            finally:
                os.close(err)
                with contextlib.suppress(RuntimeFailure, TimeoutError):
                    await self.delete(probe_id)
        return None


def _log_command(command: str, started: float, code: int) -> None:
    # Where a container's lifecycle spends its time, under TCG mostly here.
    if logger.isEnabledFor(logging.DEBUG):
        elapsed_ms = round((time.monotonic() - started) * 1000, 1)
        logger.debug("runtime command", extra={"command": command, "exit": code, "ms": elapsed_ms})


def probe_spec(container_id: str) -> dict[str, Any]:
    return {
        "ociVersion": "1.0.2",
        "process": {"args": ["/probe"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        # /dev on its own tmpfs, as in real specs: the bundle sits on the guest's /run, which
        # is nodev, and runc reopens /dev/null in the container.
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]},
        ],
        "linux": {
            "namespaces": [{"type": "mount"}, {"type": "pid"}],
            "cgroupsPath": f"{CONTAINER_ROOT}/{container_id}",
        },
    }


def write_json(path: str, data: dict[str, Any]) -> None:
    # Small files on tmpfs: not worth a thread.
    with open(path, "w") as f:
        json.dump(data, f)


def read_text(path: str) -> str:
    # Small files on tmpfs: not worth a thread.
    with open(path, errors="replace") as f:
        return f.read()


def read_pid(path: str) -> int:
    with open(path) as f:
        return int(f.read().strip())


def read_log_errors(path: str) -> str:
    """The error lines of a runtime's JSON log, or its last line."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return "no log"
    errors = []
    for line in lines:
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("level") in ("error", "fatal"):
                errors.append(str(record.get("msg", "")))
    return "; ".join(errors) or (lines[-1] if lines else "empty log")


async def detect(reaper: Reaper) -> OciRuntime:
    """The first runtime of CANDIDATES that is installed and passes the probe."""
    no_pivot = root_is_initramfs()
    failures = []
    for name in CANDIDATES:
        binary = shutil.which(name)
        if binary is None:
            failures.append(f"{name}: not installed")
            continue
        runtime = OciRuntime(binary, reaper, no_pivot=no_pivot)
        failure = await runtime.probe()
        if failure is None:
            logger.info("using OCI runtime", extra={"runtime": binary, "no_pivot": no_pivot})
            return runtime
        runtime.close()
        logger.warning("OCI runtime unusable", extra={"runtime": binary, "error": failure})
        failures.append(f"{binary}: {failure}")
    raise Unavailable(f"no working OCI runtime: {'; '.join(failures)}")
