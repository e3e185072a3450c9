"""Tests of lars_jax.data: TFDS preparation without TensorFlow, pipelines, augmentation."""

from __future__ import annotations

import gzip
import io
import shutil
import tarfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from _synthetic_imagenet import random_jpeg, tar_bytes
from hypothesis import given, settings
from hypothesis import strategies as st

from lars_jax import data
from lars_jax.data import fashion_mnist as fm

FMNIST_DIR = Path(fm.DEFAULT_SOURCE_DIR)
HAVE_FMNIST = all((FMNIST_DIR / n).is_file() for n in fm.DECOMPRESSED_SHA256)
needs_fmnist = pytest.mark.skipif(
    not HAVE_FMNIST,
    reason=f"Debian package dataset-fashion-mnist not installed ({FMNIST_DIR} missing); "
    "`sudo apt-get install dataset-fashion-mnist`",
)
LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]  # fmt: skip


# ----------------------------------------------------------------------------- CIFAR-10


def _write_cifar_archive(path: Path, per_batch: int, n_test: int, seed: int = 0):
    """A cifar-10-binary.tar.gz with the upstream layout; returns (train, test) arrays."""
    rng = np.random.default_rng(seed)
    out = {}
    with tarfile.open(path, "w:gz") as tar:

        def add(name: str, payload: bytes) -> None:
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))

        add("batches.meta.txt", ("\n".join(LABEL_NAMES) + "\n\n").encode())
        for split, files, n in (
            ("train", [f"data_batch_{i}.bin" for i in range(1, 6)], per_batch),
            ("test", ["test_batch.bin"], n_test),
        ):
            imgs, labs = [], []
            for f in files:
                img = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
                lab = rng.integers(0, 10, (n,), dtype=np.uint8)
                # Record: 1 label byte, then 1024 red, 1024 green, 1024 blue (row-major).
                rec = np.concatenate([lab[:, None], img.transpose(0, 3, 1, 2).reshape(n, -1)], 1)
                add(f, rec.tobytes())
                imgs.append(img)
                labs.append(lab)
            out[split] = (np.concatenate(imgs), np.concatenate(labs).astype(np.int32))
    return out


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    archive = root / "cifar-10-binary.tar.gz"
    arrays = _write_cifar_archive(archive, per_batch=3, n_test=5)
    data_dir = root / "tfds"
    data.prepare_from_archive("cifar10", archive, data_dir, verify_registered_checksum=False)
    return data_dir, arrays, archive


def test_real_cifar10_builder_parses_the_synthesized_archive(cifar_dir):
    data_dir, arrays, _ = cifar_dir
    for split, n in (("train", 15), ("test", 5)):
        src = tfds.data_source("cifar10", split=split, data_dir=str(data_dir))
        assert len(src) == n
        imgs, labs = arrays[split]
        for i in range(n):
            ex = src[i]
            ident = ex["id"].decode() if isinstance(ex["id"], bytes) else str(ex["id"])
            assert ident.startswith(f"{split}_")
            k = int(ident.split("_")[1])  # the builder's index in the archive's order
            np.testing.assert_array_equal(ex["image"], imgs[k])
            assert ex["label"] == labs[k]
    b = tfds.builder("cifar10", data_dir=str(data_dir))
    assert b.info.features["label"].names == LABEL_NAMES  # read from batches.meta.txt
    # load_split returns the same examples as arrays (in TFDS's order).
    x, y = data.load_split("cifar10", "train", data_dir)
    assert x.shape == (15, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int32
    got = sorted(zip(y.tolist(), map(bytes, x), strict=True))
    want = sorted(zip(arrays["train"][1].tolist(), map(bytes, arrays["train"][0]), strict=True))
    assert got == want


def test_registered_checksum_rejects_the_synthetic_archive(cifar_dir, tmp_path):
    _, _, archive = cifar_dir
    with pytest.raises(Exception, match="checksum"):
        data.prepare_from_archive("cifar10", archive, tmp_path, verify_registered_checksum=True)


def test_unprepared_data_set_gives_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare_from_archive"):
        data.load_split("cifar100", "train", tmp_path, download=False)
    with pytest.raises(ValueError, match="name"):
        data.load_split("imagenet2012", "train", tmp_path)


def test_host_batches_small_data_set_is_deterministic_and_resumable(cifar_dir):
    data_dir = cifar_dir[0]
    kw = dict(seed=3, data_dir=data_dir, num_threads=2)
    run = [b["label"] for b in data.host_batches("cifar10", "train", 4, num_steps=6, **kw)]
    again = [b["label"] for b in data.host_batches("cifar10", "train", 4, num_steps=6, **kw)]
    resumed = [
        b["label"]
        for b in data.host_batches("cifar10", "train", 4, start_step=4, num_steps=2, **kw)
    ]
    other = [b["label"] for b in data.host_batches("cifar10", "train", 4, num_steps=6, seed=4,
                                                   data_dir=data_dir)]  # fmt: skip
    np.testing.assert_array_equal(np.stack(run), np.stack(again))
    np.testing.assert_array_equal(np.stack(run[4:]), np.stack(resumed))
    assert not np.array_equal(np.stack(run), np.stack(other))
    # Without grain: the same batches.
    nog = [b["label"] for b in data.host_batches("cifar10", "train", 4, num_steps=6,
                                                 use_grain=False, **kw)]  # fmt: skip
    np.testing.assert_array_equal(np.stack(run), np.stack(nog))


# ----------------------------------------------------------------------------- ImageNet


def test_imagenet_host_batches_with_mock_data():
    with tfds.testing.mock_data(num_examples=24):
        kw = dict(seed=0, image_size=32, num_threads=2)
        train = list(data.host_batches("imagenet2012", "train", 8, num_steps=4, **kw))
        assert len(train) == 4
        for b in train:
            assert b["image"].shape == (8, 32, 32, 3) and b["image"].dtype == np.uint8
            assert b["label"].dtype == np.int32 and b["mask"].all()
            assert ((0 <= b["label"]) & (b["label"] < 1000)).all()
        # Epoch 0 (3 steps of 8 of 24 examples) covers every example once.
        src = tfds.data_source("imagenet2012", split="train")
        all_labels = sorted(int(src[i]["label"]) for i in range(24))
        assert sorted(np.concatenate([b["label"] for b in train[:3]]).tolist()) == all_labels
        # Two processes: each takes its contiguous half of the same global batch, crops
        # included (the global batch does not depend on the number of processes).
        halves = [
            list(data.host_batches("imagenet2012", "train", 8, num_steps=2, process_index=p,
                                   process_count=2, **kw))
            for p in (0, 1)
        ]  # fmt: skip
        for s in range(2):
            for key in ("label", "image", "index"):
                joined = np.concatenate([halves[0][s][key], halves[1][s][key]])
                np.testing.assert_array_equal(joined, train[s][key])
        # The record numbers of an epoch: a permutation of the 24 examples.
        assert sorted(np.concatenate([b["index"] for b in train[:3]]).tolist()) == list(
            range(24))
        # Resume: start_step=2 gives batches 2 and 3 again, crops included.
        resumed = list(data.host_batches("imagenet2012", "train", 8, start_step=2, num_steps=2,
                                         **kw))  # fmt: skip
        for a, b in zip(resumed, train[2:], strict=True):
            np.testing.assert_array_equal(a["image"], b["image"])
        # Evaluation: one ordered pass with a padded, masked last batch.
        ev = list(data.host_batches("imagenet2012", "validation", 10, train=False, **kw))
        assert [int(b["mask"].sum()) for b in ev] == [10, 10, 4]
        assert ev[0]["image"].shape == (10, 32, 32, 3)
        assert ev[2]["index"][:4].tolist() == [20, 21, 22, 23]
        # Two processes: contiguous halves of each global evaluation batch.
        for p in (0, 1):
            part = list(data.host_batches("imagenet2012", "validation", 10, train=False,
                                          process_index=p, process_count=2, **kw))
            for key in ("image", "mask", "index"):
                np.testing.assert_array_equal(
                    np.concatenate([b[key] for b in part]),
                    np.concatenate([b[key][5 * p:5 * p + 5] for b in ev]))
    with pytest.raises(ValueError, match="process_count"):
        next(data.host_batches("imagenet2012", "train", 9, seed=0, process_count=2))


def _coordinate_image(h: int, w: int) -> np.ndarray:
    """uint8 image whose channel 0 is the pixel's row and channel 1 its column."""
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.uint8)


def _crop_window(out: np.ndarray) -> tuple[float, float, float, float]:
    """(top, height, left, width) of the source window a resized crop came from.

    A bilinear resize of a linear ramp is linear in the output index: output pixel i
    (centre i + 0.5) samples source coordinate top + (i + 0.5) * height / size - 0.5.
    Fitted on interior pixels (the resize filter is clamped at the borders).
    """
    size = out.shape[0]
    i = np.arange(size)[3:-3]
    a, b = np.polyfit(i, out[3:-3, :, 0].mean(1), 1)
    a2, b2 = np.polyfit(i, out[:, 3:-3, 1].mean(0), 1)
    return b + 0.5 - 0.5 * a, a * size, b2 + 0.5 - 0.5 * a2, a2 * size


def test_crops_resize_to_the_requested_size():
    """random_resized_crop takes a window of 8%-100% of the area with aspect ratio in
    [3/4, 4/3] inside the image, and resizes it to size x size (Szegedy et al.'s crop).

    An image whose pixels hold their own coordinates shows which window was taken.
    Catches: area drawn as a fraction of a side (or not multiplied by h * w), the aspect
    ratio applied twice or inverted on one side only, rows and columns swapped, windows
    running off the image, a crop that is not resized, and flips that do not mirror."""
    h, w, size = 180, 240, 32
    img = _coordinate_image(h, w)
    areas, aspects = [], []
    for seed in range(40):
        out = data.random_resized_crop(np.random.default_rng(seed), img, size, flip=False)
        assert out.shape == (size, size, 3) and out.dtype == np.uint8
        out = out.astype(np.float64)
        # channel 0 depends only on the row, channel 1 only on the column (no transpose)
        assert np.ptp(out[:, :, 0], axis=1).max() == 0
        assert np.ptp(out[:, :, 1], axis=0).max() == 0
        top, ch, left, cw = _crop_window(out)
        assert -1 <= top and top + ch <= h + 1, (seed, top, ch)
        assert -1 <= left and left + cw <= w + 1, (seed, left, cw)
        areas.append(ch * cw / (h * w))
        aspects.append(cw / ch)
    areas, aspects = np.array(areas), np.array(aspects)
    # bounds, with 3% slack for the integer rounding of the window and the resize
    assert areas.min() >= 0.08 * 0.97 and areas.max() <= 1.0 + 0.02, areas
    assert aspects.min() >= 0.75 * 0.97 and aspects.max() <= 4 / 3 * 1.03, aspects
    # and the draws really spread over the ranges (not a fixed or central crop)
    assert areas.min() < 0.25 and areas.max() > 0.6
    assert aspects.min() < 0.9 and aspects.max() > 1.1
    # with flip=True about half the crops are mirrored: columns then decrease
    flipped = [
        np.polyfit(np.arange(size)[3:-3], data.random_resized_crop(
            np.random.default_rng(s), img, size)[:, 3:-3, 1].mean(0).astype(float), 1)[0] < 0
        for s in range(40)]
    assert 8 <= sum(flipped) <= 32
    # center_crop: the central square of 0.875 x the shorter side (157.5 px), resized
    c = data.center_crop(img, 48)
    assert c.shape == (48, 48, 3)
    top, ch, left, cw = _crop_window(c.astype(np.float64))
    # centred to within half a resized pixel (3.3 source px: odd margins round down)
    np.testing.assert_allclose([top + ch / 2, left + cw / 2], [h / 2, w / 2], atol=2.2)
    np.testing.assert_allclose([ch, cw], [0.875 * h, 0.875 * h], atol=2.0)
    # the centre crop of a constant image is that constant
    np.testing.assert_array_equal(data.center_crop(np.full((40, 60, 1), 7, np.uint8), 24), 7)


# ----------------------------------------------------------------------------- Fashion-MNIST


@pytest.fixture(scope="session")
def fmnist():
    if not HAVE_FMNIST:
        pytest.skip("dataset-fashion-mnist not installed")
    return data.load_split("fashion_mnist", "train"), data.load_split("fashion_mnist", "test")


def _read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    return np.frombuffer(raw, np.uint8, offset=16 if raw[3] == 3 else 8)


@needs_fmnist
def test_fashion_mnist_from_debian_files_matches_the_raw_idx_data(fmnist):
    (x, y), (xt, yt) = fmnist
    assert x.shape == (60000, 28, 28, 1) and xt.shape == (10000, 28, 28, 1)
    assert x.dtype == np.uint8 and y.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(y), np.full(10, 6000))
    for (imgs, labs), prefix in (((x, y), "train"), ((xt, yt), "t10k")):
        raw_x = _read_idx(FMNIST_DIR / f"{prefix}-images-idx3-ubyte.gz").reshape(-1, 784)
        raw_y = _read_idx(FMNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz")
        # TFDS stores the examples in its own (hashed) order: compare as multisets.
        rows = np.concatenate([labs[:, None].astype(np.uint8), imgs.reshape(-1, 784)], 1)
        raw = np.concatenate([raw_y[:, None], raw_x], 1)
        # each row's bytes, sorted by Python (numpy sorts opaque void records slowly)
        key = lambda a: sorted(map(bytes, np.ascontiguousarray(a)))  # noqa: E731
        assert key(rows) == key(raw)
    info = data.dataset_info("fashion_mnist")
    np.testing.assert_allclose((x / 255.0).mean(), info.mean[0], atol=1e-3)
    np.testing.assert_allclose((x / 255.0).std(), info.std[0], atol=1e-3)


@needs_fmnist
def test_fashion_mnist_verification_checks_the_decompressed_payload(tmp_path):
    name = "t10k-labels-idx1-ubyte.gz"
    fm.verify_fashion_mnist_file(FMNIST_DIR / name)
    raw = bytearray(gzip.decompress((FMNIST_DIR / name).read_bytes()))
    raw[100] = (raw[100] + 1) % 10  # one label changed
    (tmp_path / name).write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(fm.FashionMnistVerificationError, match="SHA-256"):
        fm.verify_fashion_mnist_file(tmp_path / name)
    raw[3] = 0x03  # wrong magic
    (tmp_path / name).write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(fm.FashionMnistVerificationError, match="magic"):
        fm.verify_fashion_mnist_file(tmp_path / name)
    # A copy recompressed differently (other gzip bytes, same payload) passes.
    shutil.copy(FMNIST_DIR / name, tmp_path / "orig.gz")
    (tmp_path / name).write_bytes(gzip.compress(gzip.decompress((tmp_path / "orig.gz")
                                                                .read_bytes()), 1))  # fmt: skip
    fm.verify_fashion_mnist_file(tmp_path / name)


def test_missing_fashion_mnist_files_say_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.prepare_fashion_mnist(tmp_path / "tfds", source_dir=tmp_path)


@needs_fmnist
def test_device_dataset_on_fashion_mnist(fmnist):
    (x, y), _ = fmnist
    info = data.dataset_info("fashion_mnist")
    ds = data.DeviceDataset(x[:1000], y[:1000], batch_size=250, seed=1, mean=info.mean,
                            std=info.std, augment=info.augment_defaults)  # fmt: skip
    xb, yb = ds.batch(5)
    assert xb.shape == (250, 28, 28, 1) and xb.dtype == jnp.float32 and yb.dtype == jnp.int32
    assert abs(float(xb.mean())) < 0.3 and 0.7 < float(xb.std()) < 1.3
    np.testing.assert_array_equal(ds.batch(5)[0], xb)


# ----------------------------------------------------------------------------- indexing


# One compiled program per data-set size (eagerly, every primitive of the Feistel rounds
# compiles alone for each size); the integer ops give the eager call's values.
_permutation = jax.jit(data.epoch_permutation, static_argnums=2)


def test_batch_indices_cover_each_epoch_and_resume():
    n, bs = 50, 8
    spe = data.steps_per_epoch(bs, n)
    f = jax.jit(data.batch_indices, static_argnums=(2, 3))
    steps = [np.asarray(f(7, s, bs, n)) for s in range(3 * spe)]
    for e in range(3):
        ep = np.concatenate(steps[e * spe : (e + 1) * spe])
        assert len(set(ep.tolist())) == spe * bs and ep.min() >= 0 and ep.max() < n
    assert not np.array_equal(steps[0], steps[spe])  # a new permutation each epoch
    # Any step, computed alone (e.g. after a resume), equals the one in sequence.
    for s in (0, spe - 1, spe, 2 * spe + 3):
        np.testing.assert_array_equal(data.batch_indices(7, s, bs, n), steps[s])
        e, p = divmod(s, spe)
        perm = np.asarray(_permutation(7, e, n))
        np.testing.assert_array_equal(steps[s], perm[p * bs : (p + 1) * bs])
    assert not np.array_equal(data.batch_indices(8, 0, bs, n), steps[0])
    with pytest.raises(ValueError, match="batch_size"):
        data.batch_indices(0, 0, 64, 50)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 60001])
def test_epoch_permutation_is_a_permutation(n):
    p = np.asarray(_permutation(11, 2, n))
    np.testing.assert_array_equal(np.sort(p), np.arange(n))
    if n >= 1000:  # looks shuffled: no trend, few fixed points, differs between epochs
        assert abs(np.corrcoef(p, np.arange(n))[0, 1]) < 0.1
        assert (p == np.arange(n)).sum() < 10
        assert (p == np.asarray(_permutation(11, 3, n))).sum() < 10
        assert (p == np.asarray(_permutation(12, 2, n))).sum() < 10


def test_device_batch_returns_the_indexed_examples():
    n = 20
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 4, 4, 2))
    labels = np.arange(n, dtype=np.int32)
    ds = data.DeviceDataset(images.copy(), labels, batch_size=6, seed=2, mean=(0.0, 0.0),
                            std=(1 / 255, 1 / 255))  # fmt: skip
    for step in (0, 4):
        xb, yb = ds.batch(step)
        np.testing.assert_array_equal(yb, data.batch_indices(2, step, 6, n))
        np.testing.assert_allclose(xb[:, 0, 0, 0], yb, atol=1e-4)  # image k holds value k


# ----------------------------------------------------------------------------- augmentation

IMGS = np.random.default_rng(0).integers(1, 256, (16, 8, 8, 3), dtype=np.uint8)
_augment = jax.jit(data.augment_batch, static_argnames=("crop_padding", "flip", "cutout"))


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), pad=st.sampled_from([1, 2]))
def test_crops_are_windows_of_the_padded_image(seed, pad):
    out = np.asarray(_augment(jax.random.key(seed), IMGS, crop_padding=pad, flip=False))
    assert out.shape == IMGS.shape and out.dtype == np.uint8
    padded = np.pad(IMGS, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = []
    for i in range(len(IMGS)):
        hits = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if np.array_equal(padded[i, dy : dy + 8, dx : dx + 8], out[i])
        ]
        assert hits, f"example {i} is not a window of the padded image"
        offsets.append(hits[0])
    assert len(set(offsets)) > 1  # offsets vary across the batch


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_flips_really_flip(seed):
    out = np.asarray(_augment(jax.random.key(seed), IMGS, crop_padding=0, flip=True))
    flipped = [np.array_equal(o, x[:, ::-1]) for o, x in zip(out, IMGS, strict=True)]
    kept = [np.array_equal(o, x) for o, x in zip(out, IMGS, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 0 < sum(flipped) < len(IMGS) or len(IMGS) < 4


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_cutout_zeroes_at_most_one_square(seed):
    out = np.asarray(_augment(jax.random.key(seed), IMGS, crop_padding=0, flip=False, cutout=4))
    zero = out == 0  # IMGS has no zeros
    np.testing.assert_array_equal(out[~zero], IMGS[~zero])
    for z in zero:
        ys, xs, _ = np.nonzero(z)
        assert 0 < len(ys) <= 4 * 4 * 3
        assert ys.max() - ys.min() < 4 and xs.max() - xs.min() < 4


def test_augmentation_is_deterministic_given_the_key():
    k = jax.random.key(5)
    a = _augment(k, IMGS, crop_padding=2, flip=True, cutout=3)
    np.testing.assert_array_equal(a, _augment(k, IMGS, crop_padding=2, flip=True, cutout=3))
    b = _augment(jax.random.key(6), IMGS, crop_padding=2, flip=True, cutout=3)
    assert not np.array_equal(a, b)
    with pytest.raises(ValueError, match="uint8"):
        data.augment_batch(k, IMGS.astype(np.float32))


def test_normalize_matches_numpy():
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    got = data.normalize(IMGS, mean, std)
    want = (IMGS / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert data.normalize(IMGS, mean, std, jnp.bfloat16).dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="per channel"):
        data.normalize(IMGS, (0.5, 0.5), (0.2, 0.2))


def test_dataset_info():
    for name in data.DATASET_NAMES:
        info = data.dataset_info(name)
        assert len(info.mean) == len(info.std) == info.image_shape[-1]
    assert data.dataset_info("cifar100").num_classes == 100
    with pytest.raises(ValueError, match="name"):
        data.dataset_info("mnist")


# ----------------------------------------------------------------------------- ImageNet (real)




def test_real_imagenet2012_builder_on_synthesized_tars(tmp_path):
    rng = np.random.default_rng(0)
    manual = tmp_path / "manual"
    manual.mkdir()
    synsets = ["n01440764", "n01443537"]  # classes 0 and 1 of TFDS's labels.txt
    train = {
        f"{s}.tar": tar_bytes({f"{s}_{i}.JPEG": random_jpeg(rng, 20 + 3 * i, 30) for i in range(3)})
        for s in synsets
    }
    (manual / "ILSVRC2012_img_train.tar").write_bytes(tar_bytes(train))
    val = {f"ILSVRC2012_val_{i:08d}.JPEG": random_jpeg(rng, 24, 24) for i in (1, 2, 3)}
    (manual / "ILSVRC2012_img_val.tar").write_bytes(tar_bytes(val))
    data.prepare_imagenet(tmp_path / "tfds", manual_dir=manual)
    b = tfds.builder("imagenet2012", data_dir=str(tmp_path / "tfds"))
    names = b.info.features["label"].names
    src = tfds.data_source("imagenet2012", split="train", data_dir=str(tmp_path / "tfds"))
    assert len(src) == 6
    for i in range(6):
        ex = src[i]
        fname = ex["file_name"].decode() if isinstance(ex["file_name"], bytes) else ex["file_name"]
        assert names[ex["label"]] == fname.split("_")[0]
        assert ex["image"].shape[1:] == (30, 3)
    batches = list(data.host_batches("imagenet2012", "train", 3, seed=0, num_steps=2,
                                     image_size=16, data_dir=tmp_path / "tfds"))  # fmt: skip
    assert sorted(np.concatenate([x["label"] for x in batches]).tolist()) == [0, 0, 0, 1, 1, 1]
    assert batches[0]["image"].shape == (3, 16, 16, 3)
    # Validation labels come from TFDS's validation_labels.txt, by sorted file name.
    vsrc = tfds.data_source("imagenet2012", split="validation", data_dir=str(tmp_path / "tfds"))
    assert len(vsrc) == 3
    from tensorflow_datasets.datasets.imagenet2012 import imagenet_common

    path = tfds.core.tfds_path(imagenet_common._VALIDATION_LABELS_FNAME)
    first = path.read_text().split()[:3]
    got = {}
    for i in range(3):
        ex = vsrc[i]
        fname = ex["file_name"].decode() if isinstance(ex["file_name"], bytes) else ex["file_name"]
        got[fname] = names[ex["label"]]
    assert got == {f"ILSVRC2012_val_{i + 1:08d}.JPEG": first[i] for i in range(3)}
    with pytest.raises(FileNotFoundError, match="prepare_imagenet"):
        next(data.host_batches("imagenet2012", "train", 2, seed=0, data_dir=tmp_path / "none"))
