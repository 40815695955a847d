"""The CLI's small state file per target: the sandbox it created and its containers.

The agent API has no ListContainers, so `ps` reads what `run` recorded here. Several CLI
processes share the file (a `run` in one terminal, `exec`/`ps` in another): every update
holds an flock and replaces the file atomically.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class ContainerRecord:
    id: str
    rootfs: str  # the host folder given to `run`
    args: list[str]
    created: float  # time.time()
    owner_pid: int  # the `run` process streaming its stdio and removing it at the end
    mount: str  # the host bind mount of its rootfs, undone on removal
    started: bool = False  # recorded before creation, so a failed `run` can still clean up


@dataclass
class TargetState:
    sandbox_id: str | None = None
    containers: dict[str, ContainerRecord] = field(default_factory=dict)


class StateFile:
    @classmethod
    def of(cls, target_name: str) -> StateFile:
        """The state file of a target (Target.name), under ${XDG_RUNTIME_DIR:-/run}."""
        root = Path(os.environ.get("XDG_RUNTIME_DIR") or "/run") / "pykata" / "ctl"
        return cls(root / f"{target_name}.json")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_suffix(".lock")

    def load(self) -> TargetState:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return TargetState()
        return TargetState(
            sandbox_id=raw.get("sandbox_id"),
            containers={
                cid: ContainerRecord(**record) for cid, record in raw["containers"].items()
            },
        )

    def save(self, state: TargetState) -> None:
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(asdict(state), indent=2))
        tmp.replace(self.path)

    @contextmanager
    def update(self) -> Iterator[TargetState]:
        """Locked read-modify-write: changes made to the yielded state are saved on exit."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock_path.open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self.load()
            yield state
            self.save(state)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self.lock_path.unlink(missing_ok=True)
