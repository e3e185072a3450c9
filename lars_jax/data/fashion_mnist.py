"""Fashion-MNIST offline: prepare TFDS's `fashion_mnist` from Debian's `dataset-fashion-mnist`.

Debian's package ships the four idx files of Fashion-MNIST gzip-compressed in
`/usr/share/datasets/fashion-mnist/`. Their gzip bytes differ from the archives whose
SHA-256 TFDS registered (`url_checksums/fashion_mnist.txt`): the Debian files are smaller
by exactly the length of the gzip header's original-file-name field (they were recompressed
or stripped, mtime 2020-06-05), so TFDS's checksum of the compressed file cannot match.
Instead of switching verification off, `verify_fashion_mnist_files` checks the
*decompressed* contents of each file:

  * the idx magic number (0x00000803 for images, 0x00000801 for labels), the item count
    (60000 train, 10000 test) and, for images, the 28x28 shape in the header;
  * the exact decompressed length (16 + n*784 or 8 + n bytes);
  * the SHA-256 of the complete decompressed file, against the values in
    `DECOMPRESSED_SHA256` (computed once from the files of Debian's package
    0.0~git20200523.55506a9-1, upstream commit 55506a9 of zalandoresearch/fashion-mnist);
  * gzip's own CRC-32 and length trailer (checked by Python's gzip module while reading).

Only after all four files pass is TFDS's real `fashion_mnist` builder run: its download
manager is given these verified files (with their own gzip SHA-256, so TFDS's checksum
validation still runs and guards against the files changing between verification and use),
it extracts them, and the builder's own `_generate_examples` parses them and writes the
array_record data set. See `lars_jax.data.sources.prepare_with_local_files`.

References:
  Xiao, Rasul, Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
  Learning Algorithms", 2017, arXiv 1708.07747.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from pathlib import Path

DEFAULT_SOURCE_DIR = "/usr/share/datasets/fashion-mnist"

# file name -> (idx magic, item count, sha256 of the decompressed file)
DECOMPRESSED_SHA256 = {
    "train-images-idx3-ubyte.gz": (
        0x803,
        60000,
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ),
    "train-labels-idx1-ubyte.gz": (
        0x801,
        60000,
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ),
    "t10k-images-idx3-ubyte.gz": (
        0x803,
        10000,
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ),
    "t10k-labels-idx1-ubyte.gz": (
        0x801,
        10000,
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
}

MISSING_HELP = (
    "Fashion-MNIST files not found in {dir}: missing {files}. Install them with "
    "`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or download the four "
    "files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
    "t10k-labels-idx1-ubyte.gz from https://github.com/zalandoresearch/fashion-mnist "
    "(data/fashion) into a directory and pass it as source_dir."
)


class FashionMnistVerificationError(ValueError):
    """A Fashion-MNIST source file does not have the expected decompressed contents."""


def verify_fashion_mnist_file(path: str | os.PathLike) -> None:
    """Checks one gzipped idx file's decompressed contents (see the module docstring).

    Raises:
      FashionMnistVerificationError: naming the file and the check that failed.
    """
    path = Path(path)
    magic, count, sha = DECOMPRESSED_SHA256[path.name]
    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as err:  # bad gzip, CRC or length trailer
        raise FashionMnistVerificationError(f"{path}: not a valid gzip file: {err}") from err
    header = 16 if magic == 0x803 else 8
    if len(data) < header:
        raise FashionMnistVerificationError(f"{path}: truncated idx header")
    got_magic, got_count = struct.unpack(">II", data[:8])
    if got_magic != magic:
        raise FashionMnistVerificationError(
            f"{path}: idx magic {got_magic:#010x}, expected {magic:#010x}"
        )
    if got_count != count:
        raise FashionMnistVerificationError(f"{path}: {got_count} items, expected {count}")
    if magic == 0x803:
        rows, cols = struct.unpack(">II", data[8:16])
        if (rows, cols) != (28, 28):
            raise FashionMnistVerificationError(f"{path}: images {rows}x{cols}, expected 28x28")
    expected_len = header + count * (784 if magic == 0x803 else 1)
    if len(data) != expected_len:
        raise FashionMnistVerificationError(
            f"{path}: {len(data)} decompressed bytes, expected {expected_len}"
        )
    got_sha = hashlib.sha256(data).hexdigest()
    if got_sha != sha:
        raise FashionMnistVerificationError(
            f"{path}: decompressed SHA-256 {got_sha}, expected {sha}"
        )


def find_fashion_mnist_files(source_dir: str | os.PathLike = DEFAULT_SOURCE_DIR) -> dict[str, Path]:
    """The four source files in `source_dir`; FileNotFoundError saying how to get them."""
    source_dir = Path(source_dir)
    files = {name: source_dir / name for name in DECOMPRESSED_SHA256}
    missing = [n for n, p in files.items() if not p.is_file()]
    if missing:
        raise FileNotFoundError(MISSING_HELP.format(dir=source_dir, files=", ".join(missing)))
    return files


def verify_fashion_mnist_files(
    source_dir: str | os.PathLike = DEFAULT_SOURCE_DIR,
) -> dict[str, Path]:
    """Finds and verifies the four files; returns {file name: path}."""
    files = find_fashion_mnist_files(source_dir)
    for path in files.values():
        verify_fashion_mnist_file(path)
    return files
