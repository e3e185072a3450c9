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



VAL_SYNSETS = ("n01751748", "n09193705", "n02105855", "n04263257", "n03125729", "n01735189",
               "n02346627", "n02776631")
"""The labels of the first 8 validation images in sorted file-name order (TFDS labels the
validation tar's sorted file names with the lines of its imagenet2012/validation_labels.txt)."""


def colour_jpeg(rng: np.random.Generator, code: int, h: int, w: int) -> bytes:
    """A JPEG whose three channels are dark or bright by the bits of `code` (0-7), noisy."""
    from PIL import Image

    base = np.array([40 + 175 * ((code >> c) & 1) for c in range(3)], np.int16)
    pixels = np.clip(base + rng.integers(-30, 31, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


def learnable_imagenet_tars(rng: np.random.Generator, per_class: int) -> tuple[bytes, bytes]:
    """ILSVRC2012 train and val tars that a small model learns in a few steps.

    The 8 classes are those of the first 8 validation images (`VAL_SYNSETS`); class `k`'s
    images have the colour code `k` (`colour_jpeg`). The 8 validation images have their
    class's colour except the last, which has the first class's colour: a model that has
    learnt the colours scores 7/8 = 0.875.

    Returns:
      (train tar, val tar) bytes, `per_class` training images per class.
    """
    train = {f"{syn}.tar": tar_bytes({f"{syn}_{i}.JPEG": colour_jpeg(rng, k, 12 + i % 5, 14)
                                      for i in range(per_class)})
             for k, syn in enumerate(VAL_SYNSETS)}
    codes = [*range(len(VAL_SYNSETS) - 1), 0]
    val = {f"ILSVRC2012_val_{i + 1:08d}.JPEG": colour_jpeg(rng, code, 13, 15)
           for i, code in enumerate(codes)}
    return tar_bytes(train), tar_bytes(val)
