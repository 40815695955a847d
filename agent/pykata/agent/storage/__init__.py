"""Storage drivers by Kata driver name, and the ref-counting manager."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pykata.agent.storage.manager import Driver


def drivers() -> dict[str, Driver]:
    from pykata.agent.storage import bind, ephemeral, local, overlay, virtiofs

    return {
        "virtio-fs": virtiofs.attach,
        "local": local.attach,
        "ephemeral": ephemeral.attach,
        "overlayfs": overlay.attach,
        "watchable-bind": bind.attach,
    }
