"""Scoped NumPy/PIL stand-ins for the few TensorFlow calls in TFDS's generation path.

tensorflow-datasets 4.9.x reads prepared data sets without TensorFlow (`tfds.data_source`,
array_record files), but *preparing* the image data sets still calls TensorFlow in a handful
of places: `tf.io.gfile` (open/exists/remove/makedirs) in the archive extractor, the
shuffler and the MNIST/CIFAR/ImageNet parsers, `tf.compat.as_text` in the extractor,
`tf.image.encode_png` (through `TFGraphRunner`) when an `Image` feature encodes a NumPy
array, and `tfds.core.utils.png_to_jpeg` / `jpeg_cmyk_to_rgb` (TF image codecs; ImageNet
uses them for 1 PNG and 22 CMYK files). `tf_free_generation()` replaces exactly these, for
the duration of the `with` block and only inside the TFDS modules listed in
`_PATCHED_MODULES` (plus those two utilities), by local-file and PIL equivalents, so that
the builders' own `_split_generators` / `_generate_examples` (the real parsing code),
TFDS's download manager with its checksum validation, the extractor, shuffler, serializer
and array_record writer all run unchanged. PNG is lossless, so the decoded pixels are the
same as with TensorFlow's encoder (the PNG bytes may differ).

When TensorFlow is installed nothing is patched.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import importlib.util
import io
import os
import shutil
import types
from collections.abc import Iterator

import numpy as np

_PATCHED_MODULES = (
    "tensorflow_datasets.core.download.extractor",
    "tensorflow_datasets.core.shuffle",
    "tensorflow_datasets.image_classification.mnist",
    "tensorflow_datasets.image_classification.cifar",
    "tensorflow_datasets.datasets.imagenet2012.imagenet2012_dataset_builder",
    "tensorflow_datasets.datasets.imagenet2012.imagenet_common",
)


class _ResourceExhaustedError(Exception):
    """Stand-in for tf.errors.ResourceExhaustedError (never raised by local files)."""


def _gfile_open(path: os.PathLike | str, mode: str = "r") -> io.IOBase:
    return builtins.open(os.fspath(path), mode)


def _makedirs(path: os.PathLike | str) -> None:
    os.makedirs(os.fspath(path), exist_ok=True)


def _remove(path: os.PathLike | str) -> None:
    os.remove(os.fspath(path))


def _rmtree(path: os.PathLike | str) -> None:
    shutil.rmtree(os.fspath(path))


def _as_text(x: bytes | str, encoding: str = "utf-8") -> str:
    return x.decode(encoding) if isinstance(x, bytes) else x


def _fake_tf() -> types.SimpleNamespace:
    gfile = types.SimpleNamespace(
        GFile=_gfile_open,
        exists=lambda p: os.path.exists(os.fspath(p)),
        makedirs=_makedirs,
        remove=_remove,
        rmtree=_rmtree,
    )
    return types.SimpleNamespace(
        io=types.SimpleNamespace(gfile=gfile),
        compat=types.SimpleNamespace(as_text=_as_text),
        errors=types.SimpleNamespace(ResourceExhaustedError=_ResourceExhaustedError),
    )


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 HxWxC (C in 1, 3, 4) or HxW array, via PIL."""
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"only uint8 images can be encoded here, got {image.dtype}")
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _to_rgb_jpeg(image_bytes: bytes, quality: int = 100) -> bytes:
    """Re-encodes any PIL-readable image (PNG, CMYK JPEG) as an RGB JPEG."""
    from PIL import Image

    with Image.open(io.BytesIO(image_bytes)) as img:
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def tensorflow_available() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


@contextlib.contextmanager
def tf_free_generation() -> Iterator[None]:
    """Context manager: lets TFDS prepare MNIST, CIFAR and ImageNet builders without TensorFlow."""
    if tensorflow_available():
        yield
        return
    from tensorflow_datasets.core.features import image_feature

    fake = _fake_tf()
    saved: list[tuple[object, str, object]] = []
    try:
        for name in _PATCHED_MODULES:
            mod = importlib.import_module(name)
            saved.append((mod, "tf", mod.tf))
            mod.tf = fake
        enc = image_feature._ImageEncoder
        saved.append((enc, "_encode_image", enc.__dict__["_encode_image"]))

        def _encode_image(self: object, np_image: np.ndarray) -> bytes:
            image_feature._validate_np_array(np_image, shape=self.shape, dtype=self.np_dtype)
            if self.encoding_format != "png":
                raise NotImplementedError(
                    f"only PNG encoding works without TensorFlow, not {self.encoding_format}"
                )
            return encode_png(np_image)

        enc._encode_image = _encode_image
        from tensorflow_datasets.core import utils as tfds_utils

        for fn in ("png_to_jpeg", "jpeg_cmyk_to_rgb"):
            saved.append((tfds_utils, fn, getattr(tfds_utils, fn)))
            setattr(tfds_utils, fn, _to_rgb_jpeg)
        yield
    finally:
        for obj, attr, value in reversed(saved):
            setattr(obj, attr, value)
