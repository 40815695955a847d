"""The real Kata stack on our image: containerd (Debian) → the Kata Go shim → kata-clh → QEMU.

The shim is not ours and is not on PyPI or in Debian: `KATA_SHIM` names a folder holding
`containerd-shim-kata-v2` (or its `.zst`), which `.ci/run` points at the prebuilt Kata 3.30
shim. The guest is the VM tier's initrd (built or reused by kata-image).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from containerd import Containerd
from oci_image import write_busybox_image
from stack import Kata, shim_dir

from pykata.builder import build, kataconfig, layout
from pykata.builder.stages import Stages


@pytest.fixture(scope="session")
def guest() -> build.Result:
    output = layout.cache_root() / "test-artifacts" / "initrd-debian"
    stages = Stages(output / "kata-image.log")
    build.setup(None, stages)
    return build.build(build.Options(flavour="initrd", output=output), stages)


@pytest.fixture(scope="module")
def kata(guest: build.Result, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kata]:
    shims = shim_dir()
    work = tmp_path_factory.mktemp("kata")
    config = work / "configuration.toml"
    artifacts = kataconfig.Artifacts(guest.kernel, "initrd", guest.artifact)
    config.write_text(kataconfig.configuration(artifacts, kataconfig.tools_dir(), debug=True))
    daemon = Containerd(work / "containerd", [shims], {"KATA_CONF_FILE": str(config)})
    daemon.start()
    try:
        image = write_busybox_image(work / "busybox.tar", work / "image")
        imported = daemon.ctr("image", "import", str(work / "busybox.tar"))
        assert imported.returncode == 0, imported.stderr
        yield Kata(daemon, image)
    finally:
        daemon.stop()
