"""Debian mirrors for the guest, derived from the build host's own apt configuration.

The repository names no mirror host: whatever archive the build host already uses (an
official mirror, a proxy, a local snapshot) is reused for the guest's trixie packages, or
the user passes --mirror. The guest's security archive is the host's security archive, or
the conventional `-security` sibling of the main archive when the host has none.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pykata.builder.stages import BuildError, Stages

RELEASE = "trixie"
GUEST_SUITES = (RELEASE, f"{RELEASE}-updates")
SECURITY_SUITE = f"{RELEASE}-security"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
# Debian release names and aliases; an entry for any other suite (Ubuntu, a vendor repo)
# is not a Debian archive and cannot serve trixie packages.
DEBIAN_SUITES = frozenset(
    {
        "buster",
        "bullseye",
        "bookworm",
        "trixie",
        "forky",
        "duke",
        "sid",
        "oldoldstable",
        "oldstable",
        "stable",
        "testing",
        "unstable",
    }
)
# apt package lists younger than this are reused without asking the mirror again.
LISTS_MAX_AGE = 6 * 3600


@dataclass(frozen=True)
class SourceEntry:
    """One repository line of the host's apt configuration."""

    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]


@dataclass(frozen=True)
class Mirrors:
    archive: str
    security: str

    def deb822(self, keyring: Path = KEYRING) -> str:
        """apt sources (deb822) for the guest release."""
        return (
            f"Types: deb\nURIs: {self.archive}\nSuites: {' '.join(GUEST_SUITES)}\n"
            f"Components: main\nSigned-By: {keyring}\n\n"
            f"Types: deb\nURIs: {self.security}\nSuites: {SECURITY_SUITE}\n"
            f"Components: main\nSigned-By: {keyring}\n"
        )


def parse_one_line(text: str) -> list[SourceEntry]:
    """Entries of a one-line-style sources.list (`deb [options] URI suite component...`)."""
    entries = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        # Options in brackets may contain spaces ("[ arch=amd64 signed-by=... ]").
        line = re.sub(r"\[[^\]]*\]", " ", line)
        fields = line.split()
        if len(fields) < 3 or fields[0] not in ("deb", "deb-src"):
            continue
        entries.append(SourceEntry((fields[0],), (fields[1],), (fields[2],)))
    return entries


def parse_deb822(text: str) -> list[SourceEntry]:
    """Entries of a deb822 `.sources` file; stanzas with `Enabled: no` are skipped."""
    entries = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for raw in stanza.splitlines():
            if raw.startswith("#") or not raw.strip():
                continue
            if raw[0] in " \t" and key is not None:
                fields[key] += " " + raw.strip()
                continue
            key, _, value = raw.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if not fields or fields.get("enabled", "yes").lower() == "no":
            continue
        if "uris" not in fields or "suites" not in fields:
            continue
        entries.append(
            SourceEntry(
                tuple(fields.get("types", "deb").split()),
                tuple(fields["uris"].split()),
                tuple(fields["suites"].split()),
            )
        )
    return entries


def host_entries(etc_apt: Path = Path("/etc/apt")) -> list[SourceEntry]:
    """All repository entries of the host: sources.list plus sources.list.d/*.list|*.sources."""
    entries: list[SourceEntry] = []
    main = etc_apt / "sources.list"
    if main.is_file():
        entries += parse_one_line(main.read_text())
    parts = etc_apt / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.suffix == ".list":
                entries += parse_one_line(path.read_text())
            elif path.suffix == ".sources":
                entries += parse_deb822(path.read_text())
    return entries


def _suite_base(suite: str) -> str:
    return re.split(r"[-/]", suite, maxsplit=1)[0]


def _is_security(suite: str) -> bool:
    return suite.endswith("-security") or suite.endswith("/updates")


def security_sibling(archive: str) -> str:
    """The security archive next to a main archive (`.../debian` -> `.../debian-security`)."""
    return archive.rstrip("/") + "-security"


def derive_mirrors(entries: Iterable[SourceEntry], mirror: str | None = None) -> Mirrors:
    """Pick the guest's archive and security URIs from host entries, or from --mirror."""
    if mirror is not None:
        if not re.match(r"^(https?|file)://", mirror):
            raise BuildError(f"--mirror must be an http(s):// or file:// URI, got {mirror!r}")
        return Mirrors(mirror.rstrip("/"), security_sibling(mirror))
    archive = security = None
    for entry in entries:
        if "deb" not in entry.types:
            continue
        for suite in entry.suites:
            if _suite_base(suite) not in DEBIAN_SUITES:
                continue
            if _is_security(suite):
                security = security or entry.uris[0]
            else:
                archive = archive or entry.uris[0]
    if archive is None:
        raise BuildError(
            "the host's apt configuration names no Debian archive "
            "(/etc/apt/sources.list, sources.list.d/*.list|*.sources); pass --mirror URI"
        )
    archive = archive.rstrip("/")
    return Mirrors(archive, (security or security_sibling(archive)).rstrip("/"))


def write_sandbox_sources(sandbox: Path, mirrors: Mirrors) -> Path:
    """Write the apt sources mkosi uses; its own default list also names an unreachable
    debug archive, and mkosi only writes that default when this file is absent."""
    path = sandbox / "etc/apt/sources.list.d/mkosi.sources"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(mirrors.deb822())
    return path


class PrivateApt:
    """apt-get/apt-cache with their own sources, lists and cache under `root`.

    Used to fetch trixie packages (mkosi itself, the kernel, linux-source) on any
    Debian/Ubuntu host without touching the host's apt state.
    """

    def __init__(self, root: Path, mirrors: Mirrors, stages: Stages) -> None:
        self.root = root
        self.mirrors = mirrors
        self.stages = stages
        parts = root / "sources.list.d"
        parts.mkdir(parents=True, exist_ok=True)
        sources = parts / "guest.sources"
        # Rewritten only on change: its mtime tells update() whether the lists are stale.
        if not sources.exists() or sources.read_text() != mirrors.deb822():
            sources.write_text(mirrors.deb822())
        (root / "preferences.d").mkdir(exist_ok=True)
        (root / "lists/partial").mkdir(parents=True, exist_ok=True)
        (root / "cache/archives/partial").mkdir(parents=True, exist_ok=True)
        self.options = [
            "-o", "Dir::Etc::SourceList=/dev/null",
            "-o", f"Dir::Etc::SourceParts={parts}",
            "-o", f"Dir::Etc::PreferencesParts={root / 'preferences.d'}",
            "-o", "Dir::Etc::Preferences=/dev/null",
            "-o", f"Dir::State::Lists={root / 'lists'}",
            "-o", f"Dir::State::Status={root / 'status'}",
            "-o", f"Dir::Cache={root / 'cache'}",
            "-o", "Debug::NoLocking=1",
            "-o", "APT::Sandbox::User=root",
        ]  # fmt: skip
        (root / "status").touch()

    def update(self) -> None:
        stamp = self.root / "lists/.updated"
        sources = self.root / "sources.list.d/guest.sources"
        fresh = (
            stamp.exists()
            and time.time() - stamp.stat().st_mtime < LISTS_MAX_AGE
            and stamp.stat().st_mtime >= sources.stat().st_mtime
        )
        if not fresh:
            self.stages.run(["apt-get", "-q", *self.options, "update"])
            stamp.touch()

    def show(self, package: str) -> dict[str, str]:
        """The candidate's control fields (Version, Depends, Filename ...)."""
        text = self.stages.output(
            ["apt-cache", *self.options, "show", "--no-all-versions", package]
        )
        fields: dict[str, str] = {}
        for line in text.splitlines():
            if line and line[0] not in " \t" and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Version" not in fields:
            raise BuildError(f"package {package} not found in {RELEASE}")
        return fields

    def download(self, packages: Sequence[str], dest: Path) -> list[Path]:
        """Download the candidates' .debs into dest (kept there as a cache)."""
        dest.mkdir(parents=True, exist_ok=True)
        wanted = []
        for package in packages:
            fields = self.show(package)
            # apt-get download's own file name: the epoch's colon is URL-encoded.
            version = fields["Version"].replace(":", "%3a")
            path = dest / f"{fields['Package']}_{version}_{fields['Architecture']}.deb"
            if not path.exists():
                self.stages.run(["apt-get", "-q", *self.options, "download", package], cwd=dest)
            wanted.append(path)
        return wanted
