"""Deriving the guest's Debian mirrors from a host's apt configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pykata.builder import apt
from pykata.builder.stages import BuildError

DEB822 = """\
Types: deb deb-src
# a comment inside the stanza
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Enabled: no
Types: deb
URIs: http://disabled.example/debian
Suites: bookworm
Components: main
"""


def test_deb822_stanzas_skip_disabled() -> None:
    entries = apt.parse_deb822(DEB822)
    assert [e.uris for e in entries] == [
        ("http://mirror.example/debian",),
        ("http://mirror.example/debian-security",),
    ]
    assert entries[0].types == ("deb", "deb-src")
    assert entries[0].suites == ("bookworm", "bookworm-updates")


def test_deb822_continuation_lines() -> None:
    (entry,) = apt.parse_deb822(
        "Types: deb\nURIs: http://a.example/debian\n http://b.example/debian\nSuites: trixie\n"
    )
    assert entry.uris == ("http://a.example/debian", "http://b.example/debian")


def test_one_line_format_with_options_and_comments() -> None:
    text = (
        "# deb http://commented.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k/x.gpg] http://m.example/debian bookworm main\n"
        "deb-src http://m.example/debian bookworm main\n"
        "deb http://m.example/debian-security bookworm-security main # trailing\n"
        "garbage line\n"
    )
    entries = apt.parse_one_line(text)
    assert [(e.types, e.uris, e.suites) for e in entries] == [
        (("deb",), ("http://m.example/debian",), ("bookworm",)),
        (("deb-src",), ("http://m.example/debian",), ("bookworm",)),
        (("deb",), ("http://m.example/debian-security",), ("bookworm-security",)),
    ]


def test_derive_archive_and_security_from_host() -> None:
    mirrors = apt.derive_mirrors(apt.parse_deb822(DEB822))
    assert mirrors == apt.Mirrors(
        "http://mirror.example/debian", "http://mirror.example/debian-security"
    )


def test_security_falls_back_to_sibling_of_archive() -> None:
    entries = apt.parse_one_line("deb http://local.example/debian/ bookworm main\n")
    mirrors = apt.derive_mirrors(entries)
    assert mirrors.archive == "http://local.example/debian"
    assert mirrors.security == "http://local.example/debian-security"


def test_non_debian_and_source_only_entries_are_ignored() -> None:
    entries = apt.parse_one_line(
        "deb http://vendor.example/apt cloud-sdk main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb http://archive.example/ubuntu noble main\n"
    )
    with pytest.raises(BuildError, match="--mirror"):
        apt.derive_mirrors(entries)


def test_explicit_mirror_wins_and_is_validated() -> None:
    entries = apt.parse_deb822(DEB822)
    mirrors = apt.derive_mirrors(entries, "https://override.example/debian/")
    assert mirrors.archive == "https://override.example/debian"
    assert mirrors.security == "https://override.example/debian-security"
    with pytest.raises(BuildError, match="URI"):
        apt.derive_mirrors(entries, "override.example/debian")


def test_host_entries_reads_list_and_sources_files_only(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text("deb http://one.example/debian bookworm main\n")
    parts = tmp_path / "sources.list.d"
    parts.mkdir()
    (parts / "b.sources").write_text(
        "Types: deb\nURIs: http://three.example/debian-security\nSuites: bookworm-security\n"
    )
    (parts / "a.list").write_text("deb http://two.example/debian bookworm main\n")
    (parts / "c.list.disabled").write_text("deb http://never.example/debian bookworm main\n")
    uris = [e.uris[0] for e in apt.host_entries(tmp_path)]
    assert uris == [
        "http://one.example/debian",
        "http://two.example/debian",
        "http://three.example/debian-security",
    ]


def test_guest_sources_name_trixie_suites_and_no_debug_archive(tmp_path: Path) -> None:
    mirrors = apt.Mirrors("http://m.example/debian", "http://m.example/debian-security")
    path = apt.write_sandbox_sources(tmp_path, mirrors)
    assert path == tmp_path / "etc/apt/sources.list.d/mkosi.sources"
    stanzas = apt.parse_deb822(path.read_text())
    assert [(s.uris, s.suites) for s in stanzas] == [
        (("http://m.example/debian",), ("trixie", "trixie-updates")),
        (("http://m.example/debian-security",), ("trixie-security",)),
    ]
    assert "debug" not in path.read_text()


@given(
    host=st.from_regex(r"[a-z]{1,10}\.example", fullmatch=True),
    suite=st.sampled_from(sorted(apt.DEBIAN_SUITES)),
)
def test_derived_archive_is_the_hosts_first_debian_archive(host: str, suite: str) -> None:
    text = f"deb http://{host}/debian {suite} main\ndeb http://other.example/debian {suite} main\n"
    mirrors = apt.derive_mirrors(apt.parse_one_line(text))
    assert mirrors.archive == f"http://{host}/debian"
