"""The upgrade as the ops channel drives it: upload, verify, unpack, self-check, switch; and
what UpgradeStatus reports (carried across the switch in the state)."""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pykata.agent import log
from pykata.agent.errors import AgentError, FailedPrecondition, InvalidArgument
from pykata.agent.ops.runtime import AgentRuntime
from pykata.agent.upgrade import package, switch
from pykata.agent.upgrade import state as upgrade_state
from pykata.agent.version import VERSION

logger = log.get("upgrade")

DEFAULT_READY_TIMEOUT = 60.0


@dataclass
class UpgradeStatus:
    phase: str = "idle"  # idle, receiving, checking, switching, done, rolled-back, failed
    message: str = ""
    sha256: str = ""
    received: int = 0
    from_version: str = ""
    to_version: str = ""
    generation: int = 0
    pause_seconds: float = 0.0


class UpgradeManager:
    def __init__(self, runtime: AgentRuntime, status: UpgradeStatus | None = None) -> None:
        self._runtime = runtime
        self._status = status or UpgradeStatus(generation=runtime.generation)
        self._upload: package.Upload | None = None
        self._lock = asyncio.Lock()
        self._switching: asyncio.Task[None] | None = None

    def status(self) -> UpgradeStatus:
        return self._status

    async def receive(self, sha256: str, size: int, offset: int, data: bytes) -> UpgradeStatus:
        digest = package.check_sha256(sha256)
        async with self._lock:
            self._refuse_while_switching()
            upload = self._upload
            if upload is None or upload.sha256 != digest or offset == 0:
                if offset != 0:
                    raise FailedPrecondition(f"no upload of {digest} in progress at offset 0")
                if upload is not None:
                    upload.discard()
                upload = self._upload = package.Upload(digest, size)
            elif size != upload.size:
                raise InvalidArgument(f"size changed during the upload ({upload.size} -> {size})")
            upload.write(offset, data)
            self._status = UpgradeStatus(
                phase="receiving",
                sha256=digest,
                received=upload.received,
                from_version=VERSION,
                generation=self._runtime.generation,
            )
            return self._status

    async def commit(self, sha256: str, path: str, ready_timeout: float) -> UpgradeStatus:
        """Verify, unpack, self-check; on success the switch starts once this is answered."""
        digest = package.check_sha256(sha256)
        async with self._lock:
            self._refuse_while_switching()
            artifact = self._artifact(digest, path)
            self._status = UpgradeStatus(
                phase="checking",
                sha256=digest,
                received=self._status.received,
                from_version=VERSION,
                generation=self._runtime.generation,
            )
            try:
                code = await asyncio.to_thread(package.unpack, artifact, digest)
                checked = await package.self_check(code, self._runtime.reaper)
                if upgrade_state.FORMAT not in checked.state_formats:
                    raise FailedPrecondition(
                        f"the new agent {checked.version} reads state formats "
                        f"{checked.state_formats}, this agent writes {upgrade_state.FORMAT}: "
                        "upgrade refused"
                    )
            except AgentError as exc:
                self._status.phase, self._status.message = "failed", exc.message
                raise
            finally:
                if self._upload is not None:
                    self._upload.discard()
                    self._upload = None
            self._status.phase = "switching"
            self._status.to_version = checked.version
            record = asdict(self._status)
            timeout = ready_timeout or DEFAULT_READY_TIMEOUT
            self._switching = asyncio.ensure_future(self._switch(code, timeout, record))
            logger.info("upgrade checked, switching", extra={"to_version": checked.version})
            return self._status

    def _artifact(self, digest: str, path: str) -> Path:
        if path:
            if not Path(path).is_absolute():
                raise InvalidArgument(f"path must be absolute, got {path!r}")
            if not Path(path).is_file():
                raise FailedPrecondition(f"no file at {path}")
            return Path(path)
        upload = self._upload
        if upload is None or upload.sha256 != digest:
            raise FailedPrecondition(f"nothing uploaded for {digest}: send chunks or a path")
        if not upload.complete:
            raise FailedPrecondition(f"upload incomplete: {upload.received} of {upload.size}")
        return upload.path

    def _refuse_while_switching(self) -> None:
        if self._switching is not None and not self._switching.done():
            raise FailedPrecondition("an upgrade is switching now")

    async def _switch(self, code: Path, ready_timeout: float, record: dict[str, Any]) -> None:
        try:
            await switch.drain(self._runtime)
            switch.execute(self._runtime, code, ready_timeout, record)
        except AgentError as exc:
            logger.error("upgrade failed", extra={"error": exc.message})
            self._status.phase, self._status.message = "failed", exc.message
        except Exception as exc:
            logger.exception("upgrade failed")
            self._status.phase, self._status.message = "failed", str(exc)


def restored_status(
    record: dict[str, Any], generation: int, pause: float, rolled_back: str
) -> UpgradeStatus:
    """What the agent reports after a switch: done (this is the new code) or rolled back."""
    known = {k: v for k, v in record.items() if k in UpgradeStatus.__dataclass_fields__}
    status = UpgradeStatus(**known)
    status.generation = generation
    status.pause_seconds = pause
    if rolled_back:
        status.phase, status.message = "rolled-back", rolled_back
    else:
        status.phase, status.message = "done", ""
        status.to_version = VERSION
    return status
