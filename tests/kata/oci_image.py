"""A busybox OCI image written offline: an OCI image-layout tar `ctr image import` takes.

One layer (the busybox rootfs of pykata.host.rootfs as a gzip'd tar), an image config with
`sh` as the command, a manifest and an index naming the image, all content-addressed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

from pykata.host.rootfs import make_busybox_rootfs

IMAGE_NAME = "docker.io/pykata/busybox:test"
_MEDIA = "application/vnd.oci.image"


def _descriptor(media_type: str, data: bytes) -> dict[str, object]:
    return {
        "mediaType": media_type,
        "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }


def _layer(rootfs: Path) -> tuple[bytes, str]:
    """(gzip'd layer, diff id: the digest of the uncompressed tar)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(rootfs.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(rootfs)))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            if info.isfile():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    uncompressed = raw.getvalue()
    return gzip.compress(uncompressed, mtime=0), "sha256:" + hashlib.sha256(
        uncompressed
    ).hexdigest()


def write_busybox_image(out: Path, work: Path) -> str:
    """Write the image-layout tar to `out`; returns the image name it imports as."""
    layer, diff_id = _layer(make_busybox_rootfs(work / "rootfs"))
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["sh"], "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": f"{_MEDIA}.manifest.v1+json",
            "config": _descriptor(f"{_MEDIA}.config.v1+json", config),
            "layers": [_descriptor(f"{_MEDIA}.layer.v1.tar+gzip", layer)],
        }
    ).encode()
    index_entry = _descriptor(f"{_MEDIA}.manifest.v1+json", manifest)
    index_entry["annotations"] = {
        "io.containerd.image.name": IMAGE_NAME,
        "org.opencontainers.image.ref.name": IMAGE_NAME.rsplit(":", 1)[1],
    }
    index = json.dumps(
        {"schemaVersion": 2, "mediaType": f"{_MEDIA}.index.v1+json", "manifests": [index_entry]}
    ).encode()
    files = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": index,
    }
    for blob in (layer, config, manifest):
        files["blobs/sha256/" + hashlib.sha256(blob).hexdigest()] = blob
    with tarfile.open(out, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return IMAGE_NAME
