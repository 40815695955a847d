"""Guest swap: what AddSwap and AddSwapPath refuse before any swapon."""

from __future__ import annotations

import pytest

from pykata.agent import swap
from pykata.agent.device.registry import Devices
from pykata.agent.errors import InvalidArgument, NotFound


@pytest.mark.parametrize(
    ("slots", "message"),
    [([], "0 slots"), ([2] * 9, "9 slots"), ([0x20], "out of range")],
)
async def test_bad_pci_paths_are_refused(slots: list[int], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        await swap.add_by_pci_path(Devices(0.1), slots)


@pytest.mark.parametrize(
    ("path", "error", "message"),
    [
        ("/dev/null", InvalidArgument, "not a block device"),
        ("/etc/passwd", InvalidArgument, "not under /dev"),
        ("/dev/stdin", InvalidArgument, "symlink"),
        ("/dev/pykata-no-such-disk", NotFound, "does not exist"),
    ],
)
def test_only_a_block_device_below_dev(path: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        swap.swap_on(path)
