"""Kernel .config files: parsing, the agent's required options, fragment survival."""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_SET = re.compile(r"^(CONFIG_\w+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_\w+) is not set$")


def parse(text: str) -> dict[str, str]:
    """{CONFIG_X: value} with `n` for `# CONFIG_X is not set`; other lines are ignored."""
    options = {}
    for raw in text.splitlines():
        line = raw.strip()
        if match := _SET.match(line):
            options[match.group(1)] = match.group(2)
        elif match := _UNSET.match(line):
            options[match.group(1)] = "n"
    return options


def read(path: Path) -> dict[str, str]:
    """Parse a .config file; `config.gz` (as /proc/config.gz) is decompressed."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return parse(data.decode(errors="replace"))


@dataclass(frozen=True)
class Requirement:
    option: str
    value: str  # "y": built in or module; other values must match exactly
    why: str  # the group comment it appeared under


@dataclass(frozen=True)
class Problem:
    requirement: Requirement
    actual: str | None  # None: the option does not exist in this config

    def __str__(self) -> str:
        have = "absent" if self.actual is None else self.actual
        return (
            f"{self.requirement.option}={self.requirement.value} "
            f"(have: {have}) [{self.requirement.why}]"
        )


def parse_requirements(text: str) -> list[Requirement]:
    """Required options, one `CONFIG_X=value` a line, grouped under `# group` comments."""
    group = "general"
    requirements = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            group = line.lstrip("# ").strip() or group
        elif match := _SET.match(line):
            requirements.append(Requirement(match.group(1), match.group(2), group))
        elif line:
            raise ValueError(f"not a CONFIG_X=value line: {line!r}")
    return requirements


def check(config: dict[str, str], requirements: Iterable[Requirement]) -> list[Problem]:
    """Requirements the config does not meet; `=y` is also met by a module (`=m`)."""
    problems = []
    for requirement in requirements:
        actual = config.get(requirement.option)
        accepted = {"y", "m"} if requirement.value == "y" else {requirement.value}
        if actual not in accepted:
            problems.append(Problem(requirement, actual))
    return problems


def fragment_lines(path: Path) -> list[tuple[str, str]]:
    """(option, value) of each setting line in a fragment (`n` for `is not set`)."""
    return sorted(parse(path.read_text()).items())


def lost_fragment_lines(fragments: Iterable[Path], config: dict[str, str]) -> list[str]:
    """Fragment settings that are not in the final config verbatim (`n` also when absent)."""
    lost = []
    for fragment in fragments:
        for option, value in fragment_lines(fragment):
            actual = config.get(option, "n")
            if actual != value:
                lost.append(f"{fragment.name}: {option}={value} (got {actual})")
    return lost
