"""Build (or reuse) go-ttrpc-peer, the Go ttRPC interop peer.

Inputs: the ``*.go`` files next to this script and Debian's containerd ttrpc 1.1 (GOPATH
mode from ``/usr/share/gocode``, offline: no module downloads). Missing Debian packages are
installed with apt-get. Output: ``${XDG_CACHE_HOME:-~/.cache}/pykata/go-ttrpc/go-ttrpc-peer``,
rebuilt only when the inputs' digest (sources, this script, Go and library versions) changes;
a file lock keeps concurrent builders from racing.

Usage: build.py [--force]    (prints the binary's path)
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

HERE = Path(__file__).resolve().parent
NAME = "go-ttrpc-peer"
PACKAGES = ("golang-go", "golang-github-containerd-ttrpc-dev")
# Versions that go into the digest: the toolchain and the libraries compiled in.
VERSIONED = (
    *PACKAGES,
    "golang-github-gogo-protobuf-dev",
    "golang-google-grpc-dev",
    "golang-google-genproto-dev",
)
GOPATH = "/usr/share/gocode"


class BuildError(RuntimeError):
    """The build failed; ``log`` holds the whole output."""

    def __init__(self, message: str, log: Path) -> None:
        super().__init__(message)
        self.log = log

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pykata" / NAME.removesuffix("-peer")


def installed_versions(packages: tuple[str, ...]) -> dict[str, str]:
    """``{package: version}`` of those installed (dpkg knows the rest as absent)."""
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}\t${db:Status-Abbrev}\t${Version}\n", *packages],
        capture_output=True,
        text=True,
    ).stdout
    versions = {}
    for line in out.splitlines():
        package, status, version = line.split("\t")
        if status.strip() == "ii":
            versions[package] = version
    return versions


def _run(cmd: list[str], log: IO[str], env: dict[str, str], cwd: Path | None = None) -> int:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    try:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    except OSError as e:  # e.g. no `go` on PATH
        log.write(f"{e}\n")
        return 127
    return done.returncode


def install_packages(missing: list[str], log: IO[str], log_path: Path) -> None:
    if os.geteuid() != 0:
        raise BuildError(f"installing {' '.join(missing)} needs root", log_path)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    if _run(install, log, env=env) == 0:
        return
    # Most likely stale or absent package lists: refresh once and retry.
    if _run(["apt-get", "update", "-q"], log, env=env) != 0 or _run(install, log, env=env) != 0:
        raise BuildError(f"apt-get could not install {' '.join(missing)}", log_path)


def inputs_digest(versions: dict[str, str]) -> str:
    h = hashlib.sha256()
    for package in VERSIONED:
        h.update(f"{package}={versions.get(package, '')}\n".encode())
    for source in [*sorted(HERE.glob("*.go")), Path(__file__).resolve()]:
        h.update(f"{source.name}\n".encode())
        h.update(source.read_bytes())
    return h.hexdigest()


def build(force: bool = False) -> Path:
    """The peer binary, built first if it is missing or its inputs changed."""
    out = cache_dir()
    out.mkdir(parents=True, exist_ok=True)
    binary, stamp, log_path = out / NAME, out / "stamp", out / "build.log"
    with open(out / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        versions = installed_versions(VERSIONED)
        missing = [p for p in PACKAGES if p not in versions]
        fresh = not missing and binary.exists() and stamp.exists()
        if fresh and not force and stamp.read_text() == inputs_digest(versions):
            return binary
        with open(log_path, "w") as log:
            if missing:
                install_packages(missing, log, log_path)
                versions = installed_versions(VERSIONED)
            digest = inputs_digest(versions)
            # The library's upstream version without the Debian revision, for Version().
            ttrpc = versions.get("golang-github-containerd-ttrpc-dev", "unknown").split("-")[0]
            env = {
                **os.environ,
                "GO111MODULE": "off",
                "GOPATH": GOPATH,
                "GOPROXY": "off",
                "GOFLAGS": "",
                "GOCACHE": str(out / "go-build"),
                "CGO_ENABLED": "0",
            }
            partial = out / f".{NAME}.{os.getpid()}"
            cmd = ["go", "build", "-trimpath", "-o", str(partial)]
            cmd += ["-ldflags", f"-s -w -X main.ttrpcVersion={ttrpc}", "."]
            t0 = time.monotonic()
            if _run(cmd, log, cwd=HERE, env=env) != 0:
                partial.unlink(missing_ok=True)
                raise BuildError("go build failed", log_path)
            log.write(f"built in {time.monotonic() - t0:.1f}s\n")
        os.replace(partial, binary)
        stamp.write_text(digest)
    return binary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args()
    try:
        print(build(force=args.force))
    except BuildError as e:
        sys.exit(f"{e} (log: {e.log})\n{e.tail()}")


if __name__ == "__main__":
    main()
