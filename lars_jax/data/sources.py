"""TFDS data sources without TensorFlow: data directory, offline preparation, whole splits.

Every data set comes from TFDS. Reading uses TFDS's TensorFlow-free path (array_record files
through `tfds.data_source`, images decoded with PIL). Preparing a data set offline from
local files uses `prepare_with_local_files`: TFDS's real builder (`_split_generators`,
`_generate_examples`, extractor, shuffler, writer) runs with a `DownloadManager` whose
`manual_dir` holds the local files, and whose expected checksums are those of the given
files (which the caller must have verified by other means, e.g. Fashion-MNIST's
decompressed SHA-256, or which are checked against TFDS's registered checksum with
`verify_registered_checksum=True`). TFDS 4.9's generation code calls a few TensorFlow
functions; `tf_free_generation` supplies local-file and PIL stand-ins for exactly those.

The default data directory is `$LARS_JAX_DATA_DIR`, else TFDS's default
(`$TFDS_DATA_DIR` or `~/tensorflow_datasets`).

References:
  TensorFlow Datasets, "tfds.data_source" and "Manual download" guides,
  https://www.tensorflow.org/datasets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lars_jax.data._tf_free import tf_free_generation
from lars_jax.data.fashion_mnist import DEFAULT_SOURCE_DIR, verify_fashion_mnist_files
from lars_jax.data.info import dataset_info

SMALL_DATASETS = ("fashion_mnist", "cifar10", "cifar100")

# ``<split>_sha256.json`` beside a split's cached ``.npy`` arrays: the SHA-256 of each.
CACHE_CHECKSUM_SUFFIX = "_sha256.json"

OFFLINE_COMMAND = (
    "python -c \"from lars_jax.data import prepare_from_archive as p; "
    "p('{name}', '/path/{archive}')\""
)


class DataFileError(ValueError):
    """A prepared data file that cannot be read (truncated or corrupt); names it and the fix."""


def default_data_dir() -> str:
    """`$LARS_JAX_DATA_DIR` if set, else TFDS's default data directory."""
    env = os.environ.get("LARS_JAX_DATA_DIR")
    if env:
        return os.path.expanduser(env)
    from tensorflow_datasets.core import constants

    return os.path.expanduser(constants.DATA_DIR)


def builder(name: str, data_dir: str | os.PathLike | None = None) -> Any:
    """`tfds.builder(name)` in `data_dir` (default `default_data_dir()`), array_record format."""
    try:  # TFDS 4.9.10's builders import it lazily but do not declare it.
        import importlib_resources  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "tensorflow-datasets needs the package importlib_resources to build data sets: "
            "pip install importlib_resources"
        ) from err
    import tensorflow_datasets as tfds

    return tfds.builder(
        name, data_dir=os.fspath(data_dir or default_data_dir()), file_format="array_record"
    )


def prepare_with_local_files(
    b: Any,
    files: Mapping[str, str | os.PathLike],
    *,
    verify_registered_checksum: bool = False,
) -> None:
    """Runs TFDS builder `b`'s real preparation with its downloads replaced by local files.

    Args:
      b: a TFDS builder (e.g. from `builder(name, data_dir)`).
      files: registered file name (the last path component of each URL the builder
        downloads, e.g. "cifar-10-binary.tar.gz") -> local path of that file.
      verify_registered_checksum: True: TFDS checks each file against the SHA-256 it
        registered for the URL (use for pristine upstream archives). False: the expected
        checksums are those of the given files themselves, i.e. TFDS only guards against
        changes during preparation; the caller is responsible for having verified the
        contents (e.g. `verify_fashion_mnist_files`) or for using a test fixture.

    Raises:
      FileNotFoundError: a file the builder needs is not in `files`.
      tfds.download.NonMatchingChecksumError: with `verify_registered_checksum`, a mismatch.
    """
    import tensorflow_datasets as tfds
    from etils import epath
    from tensorflow_datasets.core.download import checksums

    registered = b.url_infos or {}
    url_infos = {}
    with tempfile.TemporaryDirectory(prefix="lars_jax_dl_") as tmp:
        manual = Path(tmp) / "manual"
        manual.mkdir()
        for url, info in registered.items():
            fname = info.filename or url.rsplit("/", 1)[-1]
            if fname not in files:
                raise FileNotFoundError(
                    f"{b.name} needs {fname} (from {url}); files has {sorted(files)}"
                )
            src = Path(files[fname])
            if not src.is_file():
                raise FileNotFoundError(f"{src} does not exist")
            os.symlink(src.resolve(), manual / fname)
            if verify_registered_checksum:
                url_infos[url] = info
            else:
                got = checksums.compute_url_info(epath.Path(src))
                url_infos[url] = dataclasses.replace(got, filename=fname)

        def make_download_manager(download_dir: Any, download_config: Any) -> Any:
            del download_dir, download_config
            return tfds.download.DownloadManager(
                download_dir=epath.Path(tmp) / "downloads",
                extract_dir=epath.Path(tmp) / "extracted",
                manual_dir=epath.Path(manual),
                url_infos=url_infos,
                dataset_name=b.name,
                force_checksums_validation=True,
            )

        # The builder's download manager factory is the one hook TFDS offers for this.
        b._make_download_manager = make_download_manager
        with tf_free_generation():
            b.download_and_prepare(file_format="array_record")


def prepare_from_archive(
    name: str,
    archive: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    *,
    verify_registered_checksum: bool = True,
) -> Path:
    """Prepares "cifar10" / "cifar100" offline from the upstream binary archive.

    Args:
      name: "cifar10" (cifar-10-binary.tar.gz) or "cifar100" (cifar-100-binary.tar.gz).
      archive: path of the archive.
      data_dir: TFDS data directory (default `default_data_dir()`).
      verify_registered_checksum: check the archive against TFDS's registered SHA-256
        (set False only for synthetic test archives).

    Returns:
      The prepared data set's directory.
    """
    if name not in ("cifar10", "cifar100"):
        raise ValueError(f"name must be 'cifar10' or 'cifar100', got {name!r}")
    b = builder(name, data_dir)
    if not b.is_prepared():
        fname = next(iter(b.url_infos.values())).filename
        prepare_with_local_files(
            b, {fname: archive}, verify_registered_checksum=verify_registered_checksum
        )
    return Path(b.data_dir)


def _not_prepared_help(name: str, data_dir: str) -> str:
    if name == "imagenet2012":
        return (
            f"TFDS data set 'imagenet2012' is not prepared in {data_dir}. Put "
            f"ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from image-net.org) in "
            f"{data_dir}/downloads/manual/ and run lars_jax.data.prepare_imagenet() once "
            f"(hours; ~150 GB), or copy a prepared array_record imagenet2012 folder there."
        )
    archive = "cifar-100-binary.tar.gz" if name == "cifar100" else "cifar-10-binary.tar.gz"
    return (
        f"TFDS data set {name!r} is not prepared in {data_dir} and cannot be downloaded "
        f"(no network). Offline, prepare it once from the upstream archive: "
        f"{OFFLINE_COMMAND.format(name=name, archive=archive)} (or put {archive} in "
        f"{data_dir}/downloads/manual/, or copy a prepared array_record data set there)"
    )


def _manual_archive(b: Any, data_dir: str) -> Path | None:
    """The upstream archive of builder `b` in ``<data_dir>/downloads/manual``, if there."""
    for info in (b.url_infos or {}).values():
        path = Path(data_dir) / "downloads" / "manual" / info.filename
        if path.is_file():
            return path
    return None


def _reachable(b: Any, timeout: float = 3.0) -> bool:
    """Whether the hosts of `b`'s download URLs accept a connection (a quick probe)."""
    import socket
    from urllib.parse import urlparse

    for url in (b.url_infos or {}):
        host = urlparse(url).hostname
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
        except OSError:
            return False
    return True


def check_available(name: str, data_dir: str | os.PathLike | None = None) -> bool:
    """Whether `name` is prepared in `data_dir`; raises at once when it is neither prepared
    nor preparable here.

    Fashion-MNIST needs its Debian files; CIFAR needs the prepared data set, its archive
    in ``<data_dir>/downloads/manual/``, or a reachable download host (probed with one
    connection, so an offline machine fails in a second, without TFDS's retries and
    without leaving partial downloads behind).

    Raises:
      FileNotFoundError: saying what to do (for CIFAR offline: the preparation command).
    """
    dataset_info(name)
    data_dir = os.fspath(data_dir or default_data_dir())
    if name not in SMALL_DATASETS:
        return False
    b = builder(name, data_dir)
    if b.is_prepared():
        return True
    if name == "fashion_mnist":
        from lars_jax.data.fashion_mnist import find_fashion_mnist_files

        find_fashion_mnist_files(DEFAULT_SOURCE_DIR)
    elif _manual_archive(b, data_dir) is None and not _reachable(b):
        raise FileNotFoundError(_not_prepared_help(name, data_dir))
    return False


def prepare_imagenet(
    data_dir: str | os.PathLike | None = None, manual_dir: str | os.PathLike | None = None
) -> Path:
    """Prepares TFDS's `imagenet2012` (array_record) from the manually downloaded tars.

    Args:
      data_dir: TFDS data directory (default `default_data_dir()`).
      manual_dir: folder with ILSVRC2012_img_train.tar / ILSVRC2012_img_val.tar (default
        `<data_dir>/downloads/manual`, TFDS's convention).

    Returns:
      The prepared data set's directory.
    """
    import tensorflow_datasets as tfds

    b = builder("imagenet2012", data_dir)
    if not b.is_prepared():
        config = tfds.download.DownloadConfig(
            manual_dir=os.fspath(manual_dir) if manual_dir else None
        )
        with tf_free_generation():
            b.download_and_prepare(file_format="array_record", download_config=config)
    return Path(b.data_dir)


def prepare_fashion_mnist(
    data_dir: str | os.PathLike | None = None,
    source_dir: str | os.PathLike = DEFAULT_SOURCE_DIR,
) -> Path:
    """Prepares TFDS's `fashion_mnist` (array_record) in `data_dir` from local files, offline.

    Does nothing if the data set is already prepared there.

    Args:
      data_dir: TFDS data directory (default: `lars_jax.data.default_data_dir()`).
      source_dir: directory with the four gzipped idx files (Debian's package location by
        default).

    Returns:
      The prepared data set's directory (`<data_dir>/fashion_mnist/<version>`).

    Raises:
      FileNotFoundError: a file is missing (the message says how to install it).
      FashionMnistVerificationError: a file's decompressed contents are not Fashion-MNIST.

    References:
      Xiao et al. 2017, arXiv 1708.07747.
    """
    b = builder("fashion_mnist", data_dir)
    if b.is_prepared():
        return Path(b.data_dir)
    files = verify_fashion_mnist_files(source_dir)
    prepare_with_local_files(b, files)
    return Path(b.data_dir)


def ensure_prepared(
    name: str, data_dir: str | os.PathLike | None = None, *, download: bool = True
) -> Any:
    """The builder of `name`, prepared: Fashion-MNIST from the Debian files, CIFAR by download.

    Args:
      name: a name in `DATASET_NAMES`.
      data_dir: TFDS data directory (default `default_data_dir()`).
      download: for CIFAR, let TFDS download the archive (checked against TFDS's registered
        SHA-256) when the data set is not prepared yet.

    Raises:
      FileNotFoundError: not prepared and cannot be prepared here (says what to do).
    """
    dataset_info(name)
    data_dir = os.fspath(data_dir or default_data_dir())
    b = builder(name, data_dir)
    if b.is_prepared():
        return b
    if name == "fashion_mnist":
        prepare_fashion_mnist(data_dir)
    elif name in ("cifar10", "cifar100") and _manual_archive(b, data_dir) is not None:
        prepare_from_archive(name, _manual_archive(b, data_dir), data_dir)
    elif name in ("cifar10", "cifar100") and download:
        try:
            with tf_free_generation():
                b.download_and_prepare(file_format="array_record")
        except Exception as err:
            raise FileNotFoundError(_not_prepared_help(name, data_dir) + f" ({err})") from err
    else:
        raise FileNotFoundError(_not_prepared_help(name, data_dir))
    return builder(name, data_dir)


def data_source(name: str, split: str, data_dir: str | os.PathLike | None = None) -> Any:
    """TFDS random-access data source (decodes features with NumPy/PIL; no TensorFlow)."""
    dataset_info(name)
    b = ensure_prepared(name, data_dir)
    return b.as_data_source(split=split)


def load_split(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    *,
    cache: bool = True,
    download: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """A whole split of a small data set as NumPy arrays.

    Fashion-MNIST is prepared automatically on first use (from Debian's files), CIFAR is
    downloaded and prepared by TFDS on first use (internet needed once). Decoding all
    PNG records takes a while, so the arrays are cached as `.npy` files under
    `<data_dir>/lars_jax_cache/<name>/<version>/` (`cache=False` bypasses the cache),
    with the SHA-256 of each file in `<split>_sha256.json`, written with them and checked
    at each load (one hash per file, computed from the bytes read for the array): a cache
    whose bytes changed, or without its checksums, is reported in one line and decoded
    again. Labels are checked to lie in [0, num_classes) at every load.

    Args:
      name: "fashion_mnist", "cifar10" or "cifar100".
      split: a TFDS split, e.g. "train", "test", "train[:1000]".
      data_dir: TFDS data directory (default `default_data_dir()`).
      cache: read/write the decoded-array cache.
      download: CIFAR only: download with TFDS if not prepared (needs internet once).

    Returns:
      (images uint8 [N, H, W, C], labels int32 [N]), in TFDS's order.

    Raises:
      DataFileError: the prepared files cannot be read, or a label is out of range
        (naming the file or folder and the label).
    """
    if name not in SMALL_DATASETS:
        raise ValueError(
            f"name must be one of {SMALL_DATASETS} (use host_batches for larger), got {name!r}"
        )
    data_dir = os.fspath(data_dir or default_data_dir())
    b = ensure_prepared(name, data_dir, download=download)
    label_key = "label"
    num_classes = dataset_info(name).num_classes
    cache_dir = Path(data_dir) / "lars_jax_cache" / name / str(b.version)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", split)
    img_path, lab_path = cache_dir / f"{safe}_images.npy", cache_dir / f"{safe}_labels.npy"
    sums_path = cache_dir / f"{safe}{CACHE_CHECKSUM_SUFFIX}"
    if cache and img_path.exists() and lab_path.exists():
        cached = _read_cache(img_path, lab_path, sums_path)
        if cached is not None:
            check_labels(cached[1], num_classes, f"the array cache {lab_path}",
                         "delete that file and run again to decode it anew")
            return cached
    try:
        src = b.as_data_source(split=split)
        n = len(src)
        images = np.empty((n,) + dataset_info(name).image_shape, np.uint8)
        labels = np.empty((n,), np.int32)
        chunk = 2048
        for start in range(0, n, chunk):
            idx = list(range(start, min(n, start + chunk)))
            for i, ex in zip(idx, src.__getitems__(idx), strict=True):
                images[i] = ex["image"]
                labels[i] = ex[label_key]
    except Exception as err:  # array_record/PIL raise many types on a damaged file
        first = str(err).splitlines()[0] if str(err) else ""
        raise DataFileError(
            f"the prepared {name!r} files in {b.data_dir} cannot be read "
            f"({type(err).__name__}: {first}); delete that folder and run again to "
            "prepare it anew") from err
    check_labels(labels, num_classes, f"the prepared {name!r} files in {b.data_dir}",
                 "delete that folder and run again to prepare it anew")
    if cache:
        try:
            _write_cache(images, labels, img_path, lab_path, sums_path)
        except OSError as err:  # a read-only data directory: decode again next time
            print(f"lars_jax: cannot write the array cache {cache_dir} ({err})",
                  file=sys.stderr, flush=True)
    return images, labels


def check_labels(labels: np.ndarray, num_classes: int, where: str, fix: str) -> None:
    """Raises `DataFileError` naming `where` and the first label outside [0, num_classes).

    A label out of range does not fail anywhere else: a one-hot of it is all zeros (or
    another class), so training runs on with a wrong loss and a wrong accuracy.
    """
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise DataFileError(
            f"{where}: label {int(labels[bad[0]])} at index {int(bad[0])} is outside "
            f"[0, {num_classes}) ({bad.size} such label(s)); {fix}")


def _sha256_and_array(path: Path) -> tuple[str, np.ndarray]:
    """The SHA-256 of a `.npy` file's bytes and its array, from one read of the file."""
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest(), np.load(io.BytesIO(data))


def _read_cache(img_path: Path, lab_path: Path, sums_path: Path
                ) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached arrays if their bytes match the checksums written with them, else None
    (after one line on stderr saying why; the caller decodes the split again)."""
    why = None
    try:
        want = json.loads(sums_path.read_text()) if sums_path.exists() else None
        if want is not None and not isinstance(want, dict):
            raise ValueError(f"{sums_path.name} is not a JSON object")
        arrays = []
        for path in (img_path, lab_path):
            digest, arr = _sha256_and_array(path)
            arrays.append(arr)
            if want is None:
                why = f"{sums_path.name} is missing (written by an older version or cut off)"
            elif want.get(path.name) != digest:
                why = f"the SHA-256 of {path.name} differs from {sums_path.name}"
                break
    except (ValueError, OSError, EOFError) as err:  # a truncated .npy or checksum file
        why = f"{type(err).__name__}: {err}"
    if why is None:
        return arrays[0], arrays[1]
    print(f"lars_jax: the array cache {img_path.parent} cannot be read or is not the one "
          f"written ({why}); rebuilding it from the prepared data set", file=sys.stderr,
          flush=True)
    return None


def _write_cache(images: np.ndarray, labels: np.ndarray, img_path: Path, lab_path: Path,
                 sums_path: Path) -> None:
    """Writes the arrays (each atomically), then the SHA-256 of their bytes (last, so a
    cache without its checksum file is one whose writing was cut off)."""
    img_path.parent.mkdir(parents=True, exist_ok=True)
    sums_path.unlink(missing_ok=True)
    sums = {}
    for path, arr in ((img_path, images), (lab_path, labels)):
        buf = io.BytesIO()
        np.save(buf, arr)
        data = buf.getvalue()
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # one per process
        tmp.write_bytes(data)
        os.replace(tmp, path)
        sums[path.name] = hashlib.sha256(data).hexdigest()
    tmp = sums_path.with_name(f"{sums_path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(sums, indent=1, sort_keys=True))
    os.replace(tmp, sums_path)
