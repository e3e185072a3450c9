"""Host input pipeline for data sets that do not fit on the device (ImageNet), via grain.

`host_batches` reads a TFDS data source (array_record, decoded with NumPy/PIL, no
TensorFlow), and yields batches of uint8 images and int32 labels for this process.

Order and determinism: in training mode (`train=True`) the global batch of step `s` is the
slice `[(s % spe) * B, (s % spe + 1) * B)` of the permutation of epoch `s // spe`, drawn
from `np.random.default_rng([seed, epoch])`, and process `p` of `P` takes the `p`-th
contiguous `B / P` of it. The remainder of each epoch (its last `N mod B` examples) is
dropped (`remainder="drop"`, `spe = N // B`), or kept as a padded last step
(`remainder="pad"`, `spe = ceil(N / B)`, MLPerf's step counting): its `R` examples are
spread round-robin over `pad_groups` equal contiguous groups of the global batch (the
devices, or devices x accumulation micro-batches, that normalise separately), so every group
holds `R // pad_groups` or one more. The random crop and flip of
row `r` of the global batch use `np.random.default_rng([seed, step, r, 1])`. So the global
batch depends only on (seed, step), not on the number of processes: `P` processes together
read exactly the batch one process reads, each example of an epoch once, and starting at
`start_step` (with any `P`) gives exactly the batches of an uninterrupted run. In
evaluation mode (`train=False`) the split is read once in order, process `p` gets the
`p`-th contiguous `B / P` of every global batch, and the last batch is padded. Padding rows
(of the last evaluation batch, or of a kept remainder) are zero images with label -1
(`PAD_LABEL`), `mask == False` and index 0.

Each batch also carries ``"index"``: the record numbers (in `split`) of its rows, so a
caller can log and check which examples a process fed.

`train()` streams from it through `lars_jax.train.input_pipeline` (`input_pipeline="host"`
or `"auto"`), which adds the device placement, prefetching and normalisation.

Batches are built by a grain `MapDataset` over step numbers, read with grain's threads and
prefetch buffer (`num_threads`, `prefetch`); without grain installed, a small ordered
thread pool does the same.

Preparation: Fashion-MNIST and CIFAR are prepared on first use (see `ensure_prepared`);
imagenet2012 is prepared on first use when TFDS's manual-download folder
`<data_dir>/downloads/manual/` holds ILSVRC2012_img_train.tar (and _val.tar).

Preprocessing: small data sets are passed through unchanged (augment them on the device
with `augment_batch`); "imagenet2012" is decoded from JPEG by TFDS and, in training,
random-resized-cropped (area 8%-100%, aspect ratio 3/4-4/3) to `image_size` and flipped; in
evaluation, resized so that the centre crop of `image_size` covers 87.5% of the shorter side.

References:
  Szegedy et al., "Going Deeper with Convolutions", CVPR 2015, arXiv 1409.4842
  (random-resized crops).
  grain, https://github.com/google/grain.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Literal

import numpy as np

from lars_jax.data.info import DatasetInfo, dataset_info
from lars_jax.data.sources import (
    SMALL_DATASETS,
    _not_prepared_help,
    builder,
    default_data_dir,
    ensure_prepared,
    prepare_imagenet,
)

Batch = dict[str, np.ndarray]
Remainder = Literal["drop", "pad"]
PAD_LABEL = -1
"""Label of the padding rows of a batch (`host_batches`)."""


def _data_source(name: str, split: str, data_dir: str | os.PathLike | None) -> Any:
    if name in SMALL_DATASETS:
        return ensure_prepared(name, data_dir).as_data_source(split=split)
    data_dir = os.fspath(data_dir or default_data_dir())
    b = builder(name, data_dir)
    try:  # (no `is_prepared()` check first, so that tfds.testing.mock_data works)
        return b.as_data_source(split=split)
    except Exception as err:
        manual = os.path.join(data_dir, "downloads", "manual", "ILSVRC2012_img_train.tar")
        if name == "imagenet2012" and os.path.exists(manual) and not b.is_prepared():
            prepare_imagenet(data_dir)  # TFDS's manual-download convention
            return builder(name, data_dir).as_data_source(split=split)
        raise FileNotFoundError(_not_prepared_help(name, data_dir) + f" ({err})") from err


def random_resized_crop(
    rng: np.random.Generator,
    image: np.ndarray,
    size: int,
    *,
    area: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
) -> np.ndarray:
    """Inception-style random crop of `image` (uint8 HxWxC) resized to `size` x `size`."""
    from PIL import Image

    h, w = image.shape[:2]
    for _ in range(10):
        target = rng.uniform(*area) * h * w
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            break
    else:  # fall back to the central square
        ch = cw = min(h, w)
        top, left = (h - ch) // 2, (w - cw) // 2
    crop = image[top : top + ch, left : left + cw]
    out = _resize(Image, crop, (size, size))
    if flip and rng.random() < 0.5:
        out = out[:, ::-1]
    return out


def center_crop(image: np.ndarray, size: int, crop_fraction: float = 0.875) -> np.ndarray:
    """Resize the shorter side to `size / crop_fraction`, then take the central square."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = size / crop_fraction / min(h, w)
    nh, nw = max(size, int(round(h * scale))), max(size, int(round(w * scale)))
    resized = _resize(Image, image, (nh, nw))
    top, left = (nh - size) // 2, (nw - size) // 2
    return resized[top : top + size, left : left + size]


def _resize(image_mod: Any, img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    squeeze = img.ndim == 3 and img.shape[-1] == 1
    pil = image_mod.fromarray(img[..., 0] if squeeze else img)
    out = np.asarray(pil.resize((hw[1], hw[0]), image_mod.BILINEAR))
    return out[..., None] if squeeze else out


def _ordered_prefetch(
    fn: Callable[[int], Batch], steps: Iterator[int], num_threads: int, prefetch: int
) -> Iterator[Batch]:
    with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
        pending: deque[concurrent.futures.Future[Batch]] = deque()
        for step in steps:
            pending.append(pool.submit(fn, step))
            if len(pending) > prefetch:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _pad_spread(glob: np.ndarray, batch_size: int, groups: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """A global batch's example indices and mask, a short (remainder) batch padded.

    A full batch is returned as it is (mask all True). The `R` examples of a short one go
    round-robin into `groups` equal contiguous groups (example `j` to group `j % groups`,
    slot `j // groups`), the other rows are padding (index 0, mask False).
    """
    if len(glob) == batch_size:
        return glob, np.ones(batch_size, bool)
    per = batch_size // groups
    j = np.arange(len(glob))
    rows = (j % groups) * per + j // groups
    idx = np.zeros(batch_size, glob.dtype)
    mask = np.zeros(batch_size, bool)
    idx[rows], mask[rows] = glob, True
    return idx, mask


def host_batches(
    name: str,
    split: str,
    batch_size: int,
    *,
    seed: int,
    start_step: int = 0,
    num_steps: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    data_dir: str | os.PathLike | None = None,
    train: bool = True,
    image_size: int | None = None,
    num_threads: int = 4,
    prefetch: int = 4,
    use_grain: bool = True,
    remainder: Remainder = "drop",
    pad_groups: int = 1,
) -> Iterator[Batch]:
    """Batches of one process from a TFDS data source, deterministic in (seed, step).

    Args:
      name: TFDS name ("fashion_mnist", "cifar10", "cifar100", "imagenet2012").
      split: TFDS split ("train", "test", "validation", "train[:10%]", ...).
      batch_size: global batch size (over all processes); divisible by `process_count`.
      seed: seed of the epoch permutations and the random crops.
      start_step: first step (resume from a checkpoint at this step).
      num_steps: number of batches (training default: endless; evaluation: one pass).
      process_index: this process (`jax.process_index()`).
      process_count: number of processes (`jax.process_count()`).
      data_dir: TFDS data directory (default `default_data_dir()`).
      train: shuffled endless epochs with augmentation (True) or one ordered pass (False).
      image_size: output side for imagenet2012 (default 224); ignored for small data sets.
      num_threads: reader threads.
      prefetch: batches read ahead.
      use_grain: use grain (if installed) for threading and prefetching.
      remainder: training only: "drop" each epoch's last partial batch, or "pad" it to a
        full batch (module docstring).
      pad_groups: training with remainder="pad": the number of equal contiguous groups of
        the global batch over which a remainder's examples are spread (a divisor of
        batch_size).

    Yields:
      {"image": uint8 [batch_size / process_count, H, W, C], "label": int32 [...],
       "mask": bool [...], "index": int64 [...]} (mask is False on padding rows only; index:
      the record numbers in `split`, 0 in padding rows).
    """
    info = dataset_info(name)
    _check_batch_args(batch_size, process_index, process_count, start_step, remainder,
                      pad_groups)
    src = _data_source(name, split, data_dir)
    n = len(src)
    local = batch_size // process_count
    if train:
        if n < batch_size:
            raise ValueError(f"batch_size ({batch_size}) > examples in {split!r} ({n})")
        indices = _train_indices(n, batch_size, seed=seed, remainder=remainder,
                                 pad_groups=pad_groups, process_index=process_index,
                                 local=local)
        stop = None if num_steps is None else start_step + num_steps
    else:
        indices = _eval_indices(n, batch_size, process_index=process_index, local=local)
        total = math.ceil(n / batch_size)
        stop = total if num_steps is None else min(total, start_step + num_steps)
    load = _batch_loader(src, indices, info, seed=seed, image_size=image_size, train=train,
                         process_index=process_index, local=local)
    yield from _stream(load, start_step, stop, num_threads=num_threads, prefetch=prefetch,
                       use_grain=use_grain)


_Indices = Callable[[int], tuple[np.ndarray, np.ndarray]]
"""``indices(step) -> (record numbers, mask)`` of this process's rows of a batch."""


def _check_batch_args(batch_size: int, process_index: int, process_count: int,
                      start_step: int, remainder: Remainder, pad_groups: int) -> None:
    """Refuses `host_batches` arguments that name no batch, before the source is opened."""
    if batch_size <= 0 or batch_size % process_count:
        raise ValueError(
            f"batch_size ({batch_size}) must be a positive multiple of process_count "
            f"({process_count})"
        )
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    if remainder not in ("drop", "pad"):
        raise ValueError(f"remainder must be 'drop' or 'pad', got {remainder!r}")
    if pad_groups < 1 or batch_size % pad_groups:
        raise ValueError(f"pad_groups ({pad_groups}) must be a positive divisor of batch_size "
                         f"({batch_size})")


def _train_indices(n: int, batch_size: int, *, seed: int, remainder: Remainder,
                   pad_groups: int, process_index: int, local: int) -> _Indices:
    """Training order: step ``s`` is a slice of the permutation of its epoch, a remainder
    dropped or padded (module docstring)."""
    spe = -(-n // batch_size) if remainder == "pad" else n // batch_size
    perms: dict[int, np.ndarray] = {}

    def indices(step: int) -> tuple[np.ndarray, np.ndarray]:
        epoch, pos = divmod(step, spe)
        if epoch not in perms:
            perms.clear()
            perms[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
        glob = perms[epoch][pos * batch_size : (pos + 1) * batch_size]
        glob, mask = _pad_spread(glob, batch_size, pad_groups)
        part = slice(process_index * local, (process_index + 1) * local)
        return glob[part], mask[part]

    return indices


def _eval_indices(n: int, batch_size: int, *, process_index: int, local: int) -> _Indices:
    """Evaluation order: the split in order, the last batch padded."""

    def indices(step: int) -> tuple[np.ndarray, np.ndarray]:
        start = step * batch_size + process_index * local
        idx = start + np.arange(local)
        mask = idx < n
        return np.where(mask, idx, 0), mask

    return indices


def _batch_loader(src: Any, indices: _Indices, info: DatasetInfo, *, seed: int,
                  image_size: int | None, train: bool, process_index: int, local: int
                  ) -> Callable[[int], Batch]:
    """``load(step) -> Batch``: this process's rows of the step's batch, read from `src`
    (imagenet2012 random-resized-cropped in training, centre-cropped in evaluation)."""
    size = image_size or info.image_shape[0]
    resize = not info.fits_on_device
    shape = (size, size, info.image_shape[-1]) if resize else tuple(info.image_shape)

    def load(step: int) -> Batch:
        idx, mask = indices(int(step))
        images = np.zeros((local, *shape), np.uint8)
        labels = np.full(local, PAD_LABEL, np.int32)
        for i in np.flatnonzero(mask):  # padding rows are not read
            ex = src[int(idx[i])]
            img = np.asarray(ex["image"])
            if resize and train:  # one generator per row of the global batch
                rng = np.random.default_rng([seed, int(step), process_index * local + i, 1])
                img = random_resized_crop(rng, img, size)
            elif resize:
                img = center_crop(img, size)
            images[i], labels[i] = img, ex["label"]
        return {"image": images, "label": labels, "mask": mask,
                "index": np.where(mask, idx, 0).astype(np.int64)}

    return load


def _stream(load: Callable[[int], Batch], start_step: int, stop: int | None, *,
            num_threads: int, prefetch: int, use_grain: bool) -> Iterator[Batch]:
    """``load(step)`` for the steps from `start_step` to `stop` (None: endless), in order,
    read ahead by grain's threads when grain is installed (and `use_grain`), else by
    `_ordered_prefetch`."""
    grain = None
    if use_grain:
        try:
            import grain  # noqa: F811
        except ImportError:
            grain = None
    if grain is not None:
        hi = stop if stop is not None else 2**62
        ds = grain.MapDataset.range(start_step, hi).map(load)
        it = ds.to_iter_dataset(
            grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
        )
        yield from it
        return

    def steps() -> Iterator[int]:
        s = start_step
        while stop is None or s < stop:
            yield s
            s += 1

    yield from _ordered_prefetch(load, steps(), num_threads, prefetch)
