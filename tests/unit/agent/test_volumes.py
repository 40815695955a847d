"""GetVolumeStats' domain side: only volumes below /run/kata-containers, NOT_FOUND if gone."""

from __future__ import annotations

import pytest

from pykata.agent.errors import InvalidArgument, NotFound
from pykata.agent.storage.volumes import Usage, volume_stats


async def test_a_path_outside_kata_containers_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="is not under"):
        await volume_stats("/etc")


async def test_a_missing_volume_is_not_found() -> None:
    with pytest.raises(NotFound, match="volume /run/kata-containers/no-such-volume-"):
        await volume_stats("/run/kata-containers/no-such-volume-for-a-unit-test")


def test_used_is_what_is_not_available() -> None:
    assert Usage(total=10, available=3).used == 7
