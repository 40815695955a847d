"""The pieces of the Kata test stack: the shim from KATA_SHIM, and the running stack."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from containerd import Containerd
from oci_image import write_busybox_image

from pykata.builder import build, kataconfig, layout
from pykata.builder.stages import Stages

SHIM = "containerd-shim-kata-v2"
RUNTIME = "io.containerd.kata.v2"


class ShimMissing(Exception):
    pass


def shim_dir() -> Path:
    """The shim unpacked into our cache, by the digest of what KATA_SHIM holds."""
    source = os.environ.get("KATA_SHIM")
    if not source:
        raise ShimMissing(
            "KATA_SHIM is not set: point it at a folder with containerd-shim-kata-v2 or "
            "containerd-shim-kata-v2.zst (Kata 3.x); .ci/run sets it"
        )
    folder = Path(source)
    packed, plain = folder / f"{SHIM}.zst", folder / SHIM
    found = plain if plain.is_file() else packed
    if not found.is_file():
        raise ShimMissing(f"KATA_SHIM={folder} holds neither {SHIM} nor {SHIM}.zst")
    digest = hashlib.sha256(found.read_bytes()).hexdigest()[:16]
    target = layout.cache_root() / "kata-shim" / digest
    binary = target / SHIM
    if not binary.exists():
        target.mkdir(parents=True, exist_ok=True)
        partial = target / f"{SHIM}.partial"
        if found is packed:
            subprocess.run(["zstd", "-q", "-d", "-f", "-o", str(partial), str(packed)], check=True)
        else:
            shutil.copy2(plain, partial)
        partial.chmod(0o755)
        partial.rename(binary)
    return target


@dataclass
class Kata:
    containerd: Containerd
    image: str

    def run(
        self, name: str, *args: str, flags: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        """`ctr run --rm` of the busybox image under the Kata runtime."""
        return self.containerd.ctr(
            "run", "--rm", "--runtime", RUNTIME, *flags, self.image, name, *args
        )


def start_stack(
    guest: build.Result,
    work: Path,
    debug: bool = False,
    kernel_params: str = "",
    flavour: str = "initrd",
) -> Kata:
    """containerd with the Kata shim configured for `guest` (of ``flavour``), the busybox
    image imported; ``kernel_params``: more guest kernel parameters (e.g.
    agent.ops_vport=1027)."""
    config = work / "configuration.toml"
    artifacts = kataconfig.Artifacts(guest.kernel, flavour, guest.artifact)
    text = kataconfig.configuration(artifacts, kataconfig.tools_dir(), debug=debug)
    if kernel_params:
        line = f"kernel_params = {json.dumps(kataconfig.KERNEL_PARAMS)}"
        if line not in text:
            raise RuntimeError(f"the generated configuration has no line {line!r}")
        params = f"{kataconfig.KERNEL_PARAMS} {kernel_params}"
        text = text.replace(line, f"kernel_params = {json.dumps(params)}")
    config.write_text(text)
    daemon = Containerd(work / "containerd", [shim_dir()], {"KATA_CONF_FILE": str(config)})
    daemon.start()
    try:
        image = write_busybox_image(work / "busybox.tar", work / "image")
        imported = daemon.ctr("image", "import", str(work / "busybox.tar"))
        if imported.returncode != 0:
            raise RuntimeError(f"ctr image import failed: {imported.stderr}")
    except BaseException:
        daemon.stop()
        raise
    return Kata(daemon, image)


def guest_artifacts() -> build.Result:
    """The VM tier's initrd with Debian's kernel, built or reused."""
    output = layout.cache_root() / "test-artifacts" / "initrd-debian"
    stages = Stages(output / "kata-image.log")
    build.setup(None, stages)
    return build.build(build.Options(flavour="initrd", output=output), stages)


def image_artifacts() -> build.Result:
    """The VM tier's disk image with our kernel (the image flavour needs it), built or
    reused."""
    output = layout.cache_root() / "test-artifacts" / "image-build"
    stages = Stages(output / "kata-image.log")
    build.setup(None, stages)
    return build.build(build.Options(flavour="image", kernel_source="build", output=output), stages)
