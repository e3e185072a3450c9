"""Fixtures shared by several test modules."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

TINY_TRAIN, TINY_TEST = 640, 160


def _idx_gz(path, array, magic):
    header = struct.pack(">II", magic, len(array) // (784 if magic == 0x803 else 1))
    if magic == 0x803:
        header += struct.pack(">II", 28, 28)
    path.write_bytes(gzip.compress(header + np.asarray(array, np.uint8).tobytes()))


@pytest.fixture(scope="session")
def tiny_fashion_mnist(tmp_path_factory):
    """A TFDS data dir with a tiny `fashion_mnist` (640 training and 160 test images),
    prepared by TFDS's own builder (`prepare_with_local_files`) from idx files holding the
    first images of the Debian files when they are installed, else random images.

    TFDS's Fashion-MNIST builder hard-codes 60,000/10,000 examples; they are set to the
    tiny counts while it runs. The decoded-array cache is filled here, once, so the runs
    the tests start read it."""
    from tensorflow_datasets.image_classification import mnist

    from lars_jax.data.fashion_mnist import DEFAULT_SOURCE_DIR
    from lars_jax.data.sources import builder, load_split, prepare_with_local_files

    root = tmp_path_factory.mktemp("tiny_fashion_mnist")
    src = root / "idx"
    src.mkdir()
    rng = np.random.default_rng(0)
    for part, n in (("train", TINY_TRAIN), ("t10k", TINY_TEST)):
        debian = Path(DEFAULT_SOURCE_DIR) / f"{part}-images-idx3-ubyte.gz"
        if debian.exists():
            x = np.frombuffer(gzip.decompress(debian.read_bytes())[16:16 + n * 784], np.uint8)
            labels = Path(DEFAULT_SOURCE_DIR) / f"{part}-labels-idx1-ubyte.gz"
            y = np.frombuffer(gzip.decompress(labels.read_bytes())[8:8 + n], np.uint8)
        else:
            x, y = rng.integers(0, 256, n * 784), rng.integers(0, 10, n)
        _idx_gz(src / f"{part}-images-idx3-ubyte.gz", x, 0x803)
        _idx_gz(src / f"{part}-labels-idx1-ubyte.gz", y, 0x801)
    data_dir = root / "data"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mnist, "_TRAIN_EXAMPLES", TINY_TRAIN)
        mp.setattr(mnist, "_TEST_EXAMPLES", TINY_TEST)
        prepare_with_local_files(builder("fashion_mnist", data_dir),
                                 {p.name: p for p in src.iterdir()})
    for split in ("train", "test"):
        load_split("fashion_mnist", split, data_dir)
    return data_dir
