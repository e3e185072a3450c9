"""Synthetic ImageNet files for the tests: random JPEGs and tar archives in the layout of
ILSVRC2012's tars (written here; no real images)."""

import io
import tarfile

import numpy as np


def random_jpeg(rng: np.random.Generator, h: int, w: int) -> bytes:
    """A JPEG of uniform random pixels, h x w x 3."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def tar_bytes(members: dict[str, bytes]) -> bytes:
    """An uncompressed tar archive of `members` (name -> bytes), in memory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()
