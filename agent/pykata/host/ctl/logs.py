"""`kata-agent-ctl logs`: the VM's serial console, where the agent writes its JSON log lines."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

FOLLOW_INTERVAL = 0.2


async def print_log(path: Path, follow: bool) -> None:
    with path.open("rb") as log:
        while True:
            chunk = log.read(64 * 1024)
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
            elif not follow:
                return
            else:
                await asyncio.sleep(FOLLOW_INTERVAL)
